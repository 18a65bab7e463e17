"""CI entry points: the pre-commit hook (run for real with ``pre-commit try-repo``) and the GitHub Action.

The Action cannot run here, so it is checked twice: ``action.yml`` against GitHub's action schema (the copy
check-jsonschema vendors), and its shell steps run in order by a small stand-in for the runner, with the
runner's files (``GITHUB_OUTPUT``, ``GITHUB_STEP_SUMMARY``, ``GITHUB_PATH``) in a temporary directory. The
stand-in skips ``uses:`` steps, runs the install step in one test (the others put the checkout's own
``reconcile`` on PATH instead, for speed), and understands only the expressions action.yml uses.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EXAMPLE = (REPO / "webhooks.d" / "erp-packages.yaml").read_text(encoding="utf-8")
BROKEN = EXAMPLE.replace("name: erp-packages", "name: erp-broken").replace(
    "secret_key: {env: WEBHOOK_ERP_SECRET}", "secret_key: s3cr3t-in-git"
)
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "*.egg-info", "__pycache__", "*_cache", "build", "dist", "state", "results"
)
SARIF_SCHEMA = json.loads((REPO / "tests/vendor/sarif-2.1.0-rtm.5.json").read_text(encoding="utf-8"))


def tool(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{name} is a test dependency: pip install -e '.[test]'"
    return str(path)


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    identity = [
        "-c",
        "user.name=Test",
        "-c",
        "user.email=test@example.invalid",
        "-c",
        "init.defaultBranch=main",
    ]
    done = subprocess.run(
        ["git", *identity, *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def make_repo(root: Path, files: Mapping[str, str]) -> Path:
    """A git repository at ``root`` holding ``files`` (staged, not committed)."""
    root.mkdir()
    git(root, "init", "-q")
    write(root, files)
    return root


def write(root: Path, files: Mapping[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    git(root, "add", "-A")


# --- pre-commit --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_pre_commit_hook_fails_a_broken_webhook_and_passes_the_fixed_one(tmp_path: Path) -> None:
    """``pre-commit try-repo`` with this repository's hook fails a literal secret, then passes once fixed."""
    if not (REPO / ".git").exists():
        pytest.skip("the checkout is not a git repository (try-repo clones it)")
    project = make_repo(tmp_path / "project", {"webhooks.d/erp.yaml": EXAMPLE, "webhooks.d/bad.yaml": BROKEN})
    env = {
        **os.environ,
        "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home"),
        "GIT_CONFIG_GLOBAL": os.devnull,
    }
    command = [
        tool("pre-commit"),
        "try-repo",
        str(REPO),
        "reconcile-check",
        "--all-files",
        "--color",
        "never",
    ]

    failed = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "webhooks.d/bad.yaml:12:15: error[literal-secret]" in failed.stdout
    assert "s3cr3t-in-git" not in failed.stdout

    write(project, {"webhooks.d/bad.yaml": BROKEN.replace("s3cr3t-in-git", "{env: WEBHOOK_ERP_SECRET}")})
    passed = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "Passed" in passed.stdout


def test_pre_commit_hook_checks_the_whole_directory() -> None:
    """The hook runs once over the directory (cross-file rules) and only when a webhook file changes."""
    (hook,) = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))
    assert hook["id"] == "reconcile-check"
    assert hook["pass_filenames"] is False
    assert re.search(hook["files"], "webhooks.d/erp.yaml") and re.search(hook["files"], "webhooks.d/a/b.yml")
    assert not re.search(hook["files"], "docs/webhooks.d.md")


# --- action.yml ---------------------------------------------------------------------------------------------

ACTION: dict[str, Any] = yaml.safe_load((REPO / "action.yml").read_text(encoding="utf-8"))
_INPUT = re.compile(r"\$\{\{\s*inputs\.([A-Za-z0-9_-]+)\s*\}\}")


def test_action_validates_against_githubs_action_schema() -> None:
    """action.yml is valid against the GitHub Actions metadata schema vendored by check-jsonschema."""
    done = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.github-actions", str(REPO / "action.yml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_action_schema_check_rejects_a_run_step_without_a_shell(tmp_path: Path) -> None:
    """The schema check is not vacuous: a composite ``run`` step without ``shell`` fails it."""
    broken = json.loads(json.dumps(ACTION))
    del broken["runs"]["steps"][1]["shell"]
    (tmp_path / "action.yml").write_text(yaml.safe_dump(broken), encoding="utf-8")
    done = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.github-actions", str(tmp_path / "action.yml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1


def test_action_scripts_take_inputs_from_the_environment_only() -> None:
    """No ``run:`` script pastes an input expression into shell code (a file path could inject commands)."""
    scripts = [step["run"] for step in ACTION["runs"]["steps"] if "run" in step]
    assert scripts
    assert [s for s in scripts if "${{" in s] == []


@dataclass(frozen=True)
class StepRun:
    name: str
    returncode: int
    stdout: str


@dataclass(frozen=True)
class ActionRun:
    steps: list[StepRun]
    summary: str
    outputs: str

    @property
    def failed(self) -> bool:
        return any(s.returncode for s in self.steps)


def run_action(workspace: Path, runner: Path, *, install: bool = False, **given: str) -> ActionRun:
    """Run action.yml's shell steps like the runner would (``bash -e -o pipefail``), stopping at a failure.

    With ``install`` the install step runs too, from a copy of the checkout (the action's own directory), with
    the test environment's Python standing in for setup-python; without it the checkout's ``reconcile`` is
    put on PATH instead.
    """
    inputs = {name: str(spec.get("default", "")) for name, spec in ACTION["inputs"].items()}
    inputs.update({name.replace("_", "-"): value for name, value in given.items()})
    runner.mkdir()
    files = {key: runner / key.lower() for key in ("GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY", "GITHUB_PATH")}
    for empty in files.values():
        empty.touch()
    others = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and Path(p) != BIN]
    if install:
        action_path = runner / "action"
        shutil.copytree(REPO, action_path, ignore=_NOT_SOURCE)
        setup_python = runner / "setup-python"
        setup_python.mkdir()
        (setup_python / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        (setup_python / "python").chmod(0o755)
        path = [str(setup_python), *others]
    else:
        action_path, path = REPO, [str(BIN), *others]
    base_env = {
        **os.environ,
        **{key: str(file) for key, file in files.items()},
        "RUNNER_TEMP": str(runner),
        "GITHUB_ACTION_PATH": str(action_path),
    }
    steps: list[StepRun] = []
    for step in ACTION["runs"]["steps"]:
        if "uses" in step or (step.get("name") == "Install reconcile" and not install):
            continue
        if "if" in step and not _condition(step["if"], inputs):
            continue
        added = files["GITHUB_PATH"].read_text().split()  # the runner prepends what steps add
        step_env = {k: _INPUT.sub(lambda m: inputs[m.group(1)], v) for k, v in step.get("env", {}).items()}
        env = {**base_env, "PATH": os.pathsep.join([*reversed(added), *path]), **step_env}
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
            cwd=workspace,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        steps.append(StepRun(step["name"], done.returncode, done.stdout + done.stderr))
        if done.returncode:
            break
    return ActionRun(steps, files["GITHUB_STEP_SUMMARY"].read_text(), files["GITHUB_OUTPUT"].read_text())


def _condition(expression: str, inputs: Mapping[str, str]) -> bool:
    match = re.fullmatch(r"inputs\.([A-Za-z0-9_-]+) != ''", expression.strip())
    assert match, f"the stand-in runner does not understand {expression!r}"
    return inputs[match.group(1)] != ""


@pytest.mark.slow
def test_action_installs_annotates_and_fails_an_invalid_tree_and_still_writes_sarif(tmp_path: Path) -> None:
    """The Action installs itself, writes a valid SARIF log, annotates the error and fails at the check."""
    workspace = make_repo(tmp_path / "ws", {"webhooks.d/erp.yaml": EXAMPLE, "webhooks.d/bad.yaml": BROKEN})
    result = run_action(workspace, tmp_path / "runner", install=True, sarif="reconcile.sarif")
    assert [(s.name, s.returncode) for s in result.steps] == [
        ("Install reconcile", 0),
        ("Write SARIF", 0),
        ("Check", 1),
    ], result.steps
    assert (tmp_path / "runner" / "reconcile-venv" / "bin" / "reconcile").exists()
    assert "::error file=webhooks.d/bad.yaml,line=12,col=15,title=literal-secret::" in result.steps[-1].stdout
    assert "file=reconcile.sarif" in result.outputs.splitlines()
    log = json.loads((workspace / "reconcile.sarif").read_text(encoding="utf-8"))
    assert list(jsonschema.Draft4Validator(SARIF_SCHEMA).iter_errors(log)) == []
    assert [r["ruleId"] for r in log["runs"][0]["results"]] == ["literal-secret"]


def test_action_plans_against_the_base_in_the_job_summary(tmp_path: Path) -> None:
    """With ``against`` the plan relative to the base commit goes to the job summary; a valid tree passes."""
    workspace = make_repo(tmp_path / "ws", {"webhooks.d/erp.yaml": EXAMPLE})
    git(workspace, "commit", "-q", "-m", "base")
    base = git(workspace, "rev-parse", "HEAD")
    added = BROKEN.replace("s3cr3t-in-git", "{env: WEBHOOK_ERP_SECRET}").replace("erp-broken", "erp-copy")
    write(workspace, {"webhooks.d/copy.yaml": added})
    result = run_action(workspace, tmp_path / "runner", against=base)
    assert [(s.name, s.returncode) for s in result.steps] == [("Plan against the base", 0), ("Check", 0)]
    assert f"### reconcile: plan against `{base}`" in result.summary
    assert re.search(r"^\+ .*erp-copy", result.summary, re.MULTILINE), result.summary


def test_action_fails_on_a_usage_error_in_the_plan_step(tmp_path: Path) -> None:
    """A revision that does not exist is an error of the plan step (exit 3), not a silent empty plan."""
    workspace = make_repo(tmp_path / "ws", {"webhooks.d/erp.yaml": EXAMPLE})
    git(workspace, "commit", "-q", "-m", "base")
    result = run_action(workspace, tmp_path / "runner", against="no-such-revision")
    assert [(s.name, s.returncode) for s in result.steps] == [("Plan against the base", 3)]


def test_action_strict_fails_on_warnings(tmp_path: Path) -> None:
    """``strict: true`` makes the check fail on a warning alone (here: an http:// target URL)."""
    insecure = EXAMPLE.replace("https://erp.example.com", "http://erp.example.com")
    workspace = make_repo(tmp_path / "ws", {"webhooks.d/erp.yaml": insecure})
    assert not run_action(workspace, tmp_path / "lenient").failed
    strict = run_action(workspace, tmp_path / "strict", strict="true")
    assert [(s.name, s.returncode) for s in strict.steps] == [("Check", 1)]
