"""The ``reconcile`` command: options, output formats, exit codes, and that secrets never leak into output."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from reconciler.check import Checker
from reconciler.cli import reconcile

REPO = Path(__file__).resolve().parents[2]
RECONCILE = Path(sys.executable).parent / "reconcile"
MARKER = "zq9-SECRET-MARKER-7f3e"


def webhook_yaml(
    name: str,
    *,
    url: str = "https://erp.example.com/hook",
    events: str = "package.created",
    status: str = "active",
    extra: str = "",
) -> str:
    return (
        "apiVersion: webhooks/v1\nkind: Webhook\n"
        f"metadata:\n  name: {name}\n"
        f"spec:\n  target_url: {url}\n  event_type: {events}\n  status: {status}\n"
        f"  secret_key: {{env: WEBHOOK_{name.upper().replace('-', '_')}_SECRET}}\n{extra}"
    )


def write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def run(*args: str) -> Result:
    return CliRunner().invoke(reconcile, list(args))


@pytest.fixture
def valid_dir(tmp_path: Path) -> Path:
    """Three valid webhooks with wildcards, an inactive one and a config.match filter."""
    return write(
        tmp_path / "webhooks.d",
        {
            "erp.yaml": webhook_yaml("erp-packages", events='[package.created, "package.status.*"]'),
            "audit.yaml": webhook_yaml("audit", url="https://audit.example.com/in", events='"*"'),
            "old.yaml": webhook_yaml("old-carrier", events='"package.**"', status="inactive"),
            "ch3.yaml": webhook_yaml(
                "channel-three", events='"package.**"', extra="  config:\n    match: {channel_id: 3}\n"
            ),
        },
    )


@pytest.fixture
def broken_dir(tmp_path: Path) -> Path:
    """Several files, each broken in a different way."""
    return write(
        tmp_path / "broken.d",
        {
            "missing-url.yaml": "apiVersion: webhooks/v1\nkind: Webhook\nmetadata:\n  name: a\n"
            "spec:\n  event_type: package.created\n",
            "syntax.yaml": "apiVersion: webhooks/v1\nkind: [Webhook\n",
            "dup-1.yaml": webhook_yaml("same"),
            "dup-2.yaml": webhook_yaml("same"),
            "bad-status.yaml": webhook_yaml("b", status="sometimes"),
            "fine.yaml": webhook_yaml("fine"),
        },
    )


# --- exit codes --------------------------------------------------------------------------------------------


def test_console_script_accepts_the_shipped_examples() -> None:
    """The installed script, as a real process, exits 0 on the repository's own webhooks.d examples."""
    done = subprocess.run(
        [str(RECONCILE), "--check", "webhooks.d"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "valid" in done.stdout.splitlines()[-1]


def test_console_script_exits_3_on_a_bad_option(tmp_path: Path) -> None:
    """An unknown option is a usage error: exit 3 (click's 2 would mean "changes"), message on stderr."""
    done = subprocess.run(
        [str(RECONCILE), "--no-such-option", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 3
    assert "No such option" in done.stderr
    assert done.stdout == ""


def test_valid_tree_exits_0_and_says_so(valid_dir: Path) -> None:
    """A valid tree exits 0 with a one-line summary on stdout; --check changes nothing about that."""
    for args in ([str(valid_dir)], ["--check", str(valid_dir)]):
        result = run(*args)
        assert result.exit_code == 0, result.output
        assert result.stdout.strip().endswith("4 files, 4 webhooks valid")


def test_broken_files_report_every_diagnostic_and_exit_1(broken_dir: Path) -> None:
    """All problems in all files are reported in one run, each located, and the run exits 1."""
    result = run("--check", str(broken_dir))
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    located = [line for line in lines if re.match(r"^\S+:\d+:\d+: error\[[\w-]+\]: ", line)]
    for name in ("missing-url.yaml", "syntax.yaml", "dup-2.yaml", "bad-status.yaml"):
        assert any(name in line for line in located), (name, lines)
    assert not any("fine.yaml" in line for line in located)
    assert "target_url" in result.stdout
    assert re.search(r"\d+ errors? in 6 files$", lines[-1])


@pytest.mark.parametrize(
    "args",
    [
        ["--format", "yaml"],
        ["--filter", "a=1"],
        ["--detailed-exitcode"],
        ["--route", "bad event"],
        ["--route", "x", "--filter", "novalue"],
        ["does-not-exist"],
    ],
)
def test_usage_errors_exit_3(args: list[str], valid_dir: Path) -> None:
    """Bad values, options that need another option, and a missing DIR are usage errors: exit 3."""
    target = [] if args == ["does-not-exist"] else [str(valid_dir)]
    result = run(*args, *target)
    assert result.exit_code == 3, result.output
    assert "Error" in result.stderr


def test_help_exits_0() -> None:
    """--help prints usage and exits 0."""
    result = run("--help")
    assert result.exit_code == 0
    assert "--against REF" in result.stdout


def test_unexpected_exception_exits_3_with_a_short_message(
    valid_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An internal error prints one short line on stderr (no traceback) and exits 3."""

    def boom(self: Checker) -> None:
        raise RuntimeError("kaput")

    monkeypatch.setattr(Checker, "build_report", boom)
    result = run(str(valid_dir))
    assert result.exit_code == 3
    assert result.stderr == "reconcile: internal error: RuntimeError: kaput\n"


def test_unreadable_against_ref_exits_3(valid_dir: Path) -> None:
    """--against naming neither a directory nor a revision exits 3 with the reason on stderr."""
    result = run("--against", "no/such/ref", str(valid_dir))
    assert result.exit_code == 3
    assert "no/such/ref" in result.stderr
    assert result.stdout == ""


def test_warnings_fail_only_with_strict(tmp_path: Path) -> None:
    """An http:// target URL is a warning: exit 0, or 1 under --strict, and shown as a warning either way."""
    tree = write(tmp_path / "w", {"a.yaml": webhook_yaml("a", url="http://plain.example.com/hook")})
    relaxed, strict = run(str(tree)), run("--strict", str(tree))
    assert relaxed.exit_code == 0, relaxed.output
    assert strict.exit_code == 1
    assert "warning[" in relaxed.stdout
    assert "warning[" in strict.stdout
    assert "(failing: --strict)" in strict.stdout
    assert json.loads(run("--strict", "--format", "json", str(tree)).stdout)["valid"] is False


# --- plan --------------------------------------------------------------------------------------------------


def test_detailed_exitcode_is_2_on_changes_and_0_without(valid_dir: Path, tmp_path: Path) -> None:
    """With --detailed-exitcode a valid tree exits 2 when the plan against REF is not empty, else 0."""
    same = tmp_path / "same"
    shutil.copytree(valid_dir, same)
    unchanged = run("--against", str(same), "--detailed-exitcode", str(valid_dir))
    assert unchanged.exit_code == 0, unchanged.output
    assert "No changes." in unchanged.stdout
    (same / "erp.yaml").write_text(webhook_yaml("erp-packages", url="https://old.example.com/"))
    changed = run("--against", str(same), "--detailed-exitcode", str(valid_dir))
    assert changed.exit_code == 2, changed.output
    assert '~ spec.target_url: "https://old.example.com/" → "https://erp.example.com/hook"' in changed.stdout
    assert "Plan: 0 to add, 1 to change, 0 to remove." in changed.stdout
    assert run("--against", str(same), str(valid_dir)).exit_code == 0  # changes alone never fail a check


def test_invalid_tree_exits_1_even_with_changes(broken_dir: Path, valid_dir: Path) -> None:
    """Errors win over changes: exit 1, and no plan is printed for a tree with errors."""
    result = run("--against", str(valid_dir), "--detailed-exitcode", str(broken_dir))
    assert result.exit_code == 1
    assert "No plan: the tree has errors." in result.stdout


def test_against_a_git_revision(tmp_path: Path) -> None:
    """--against HEAD compares the working tree with the last commit of the checkout containing DIR."""
    repo = tmp_path / "repo"
    config = write(repo / "webhooks.d", {"a.yaml": webhook_yaml("a")})
    env = ["-c", "user.name=t", "-c", "user.email=t@example.com"]
    for args in (["init", "-q"], ["add", "."], [*env, "commit", "-q", "-m", "one"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)
    (config / "b.yaml").write_text(webhook_yaml("b"))
    result = run("--against", "HEAD", "--detailed-exitcode", "--format", "json", str(config))
    assert result.exit_code == 2, result.output
    plan = json.loads(result.stdout)["plan"]
    assert (plan["add"], plan["change"], plan["remove"]) == (1, 0, 0)
    assert plan["against"]["kind"] == "git"
    assert plan["changes"][0]["name"] == "b"


# --- route -------------------------------------------------------------------------------------------------


def test_route_lists_wildcard_matches_and_skips(valid_dir: Path) -> None:
    """--route names the webhooks reached through wildcards, and the inactive and filtered ones it skips."""
    result = run("--route", "package.status.shipped", str(valid_dir))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert '→ erp-packages  https://erp.example.com/hook  (matched "package.status.*")' in out
    assert '→ audit  https://audit.example.com/in  (matched "*")' in out
    assert re.search(r"✗ old-carrier .*skipped: inactive", out)
    assert re.search(r'✗ channel-three .*skipped: config.match \{"channel_id": 3\}', out)
    assert "package.status.shipped reaches 2 webhooks, 2 skipped." in out


def test_route_filter_number_versus_string(valid_dir: Path) -> None:
    """--filter channel_id=3 is the number 3 and reaches the channel-3 webhook; channel_id='"3"' does not."""
    number = json.loads(
        run(
            "--route", "package.created", "--filter", "channel_id=3", "--format", "json", str(valid_dir)
        ).stdout
    )["route"]
    string = json.loads(
        run(
            "--route", "package.created", "--filter", 'channel_id="3"', "--format", "json", str(valid_dir)
        ).stdout
    )["route"]
    outcomes = {w["name"]: w["outcome"] for w in number["webhooks"]}
    assert number["filter"] == {"channel_id": 3}
    assert outcomes["channel-three"] == "deliver"
    assert string["filter"] == {"channel_id": "3"}
    assert {w["name"]: w["outcome"] for w in string["webhooks"]}["channel-three"] == "filtered"


def test_route_to_nothing(valid_dir: Path) -> None:
    """An event type no pattern but the catch-all matches reaches only the catch-all."""
    result = run("--route", "stock_location.updated", str(valid_dir))
    assert result.stdout.splitlines()[-1] == "stock_location.updated reaches 1 webhook."


# --- formats -----------------------------------------------------------------------------------------------


def _text_positions(out: str) -> list[tuple[str, int, int, str, str]]:
    found = re.findall(r"^(\S+?):(\d+):(\d+): (error|warning)\[([\w-]+)\]: ", out, re.MULTILINE)
    return [(f, int(line), int(col), sev, rule) for f, line, col, sev, rule in found]


def _github_positions(out: str) -> list[tuple[str, int, int, str, str]]:
    found = re.findall(
        r"^::(error|warning) file=([^,]+),line=(\d+),col=(\d+),title=([^:]+)::", out, re.MULTILINE
    )
    return [(f, int(line), int(col), sev, rule) for sev, f, line, col, rule in found]


def test_json_and_github_report_the_same_diagnostics_as_text(broken_dir: Path, tmp_path: Path) -> None:
    """All three formats carry the same diagnostics at the same positions, in the same order."""
    write(broken_dir, {"plain.yaml": webhook_yaml("plain", url="http://plain.example.com/")})
    text = run(str(broken_dir))
    as_json = run("--format", "json", str(broken_dir))
    github = run("--format", "github", str(broken_dir))
    assert text.exit_code == as_json.exit_code == github.exit_code == 1
    expected = _text_positions(text.stdout)
    data = json.loads(as_json.stdout)
    from_json = [(d["file"], d["line"], d["column"], d["severity"], d["rule"]) for d in data["diagnostics"]]
    assert len(expected) >= 5
    assert from_json == expected
    assert _github_positions(github.stdout) == expected
    assert data["error_count"] == sum(1 for d in expected if d[3] == "error")
    assert data["warning_count"] == sum(1 for d in expected if d[3] == "warning") >= 1
    assert data["file_count"] == 7


def test_no_secret_value_appears_in_any_output(tmp_path: Path) -> None:
    """Literal secrets are never printed back, in any format, diagnostic, plan or route test."""
    query = f"https://erp.example.com/hook?token={MARKER}"  # only a warning, so a valid tree can carry it
    # A secret *reference* is not shown in plans either (an allowed one: it draws no diagnostic).
    ref_name = "WEBHOOK_" + MARKER.upper().replace("-", "_")
    rejected = {
        "secret.yaml": webhook_yaml("lit-secret").replace("{env: WEBHOOK_LIT_SECRET_SECRET}", MARKER),
        "header.yaml": webhook_yaml(
            "lit-header", extra=f"  additional_headers:\n    Authorization: Bearer {MARKER}\n"
        ),
        "auth.yaml": webhook_yaml(
            "lit-auth", extra=f"  config:\n    auth: {{type: basic, username: u, password: {MARKER}}}\n"
        ),
        "userinfo.yaml": webhook_yaml("lit-url", url=f"https://user:{MARKER}@erp.example.com/hook"),
    }
    valid = {
        "query.yaml": webhook_yaml("query", url=query),
        "refs.yaml": webhook_yaml(
            "refs", extra=f"  additional_headers:\n    X-Api-Key: {{env: {ref_name}}}\n"
        ),
    }
    baseline = write(
        tmp_path / "baseline",
        {"query.yaml": webhook_yaml("query", url=query + "&v=1"), "refs.yaml": webhook_yaml("refs")},
    )
    current = write(tmp_path / "current", valid)
    broken = write(tmp_path / "broken", {**rejected, **valid})
    outputs = []
    for fmt in ("text", "json", "github"):
        for extra in ([], ["--against", str(baseline)], ["--route", "package.created"], ["--strict"]):
            result = run("--format", fmt, *extra, str(broken))
            assert result.exit_code == 1, result.output
            outputs.append(result.output)
        for tree, against in ((current, baseline), (baseline, broken)):
            result = run("--format", fmt, "--against", str(against), "--route", "package.created", str(tree))
            assert result.exit_code == 0, result.output
            outputs.append(result.output)
    plan = outputs[4]  # text format, valid tree against the baseline: a real plan and route
    assert "~ spec.target_url: " in plan
    assert "+ spec.additional_headers.X-Api-Key: (sensitive value)" in plan
    assert "→ query  https://erp.example.com/hook?token=***" in plan
    for output in outputs:
        assert MARKER not in output
        assert ref_name not in output


def test_help_names_the_import_subcommand() -> None:
    """``reconcile --help`` tells a new user that ``reconcile import`` exists and how to ask for its help."""
    result = CliRunner().invoke(reconcile, ["--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())  # click wraps the epilog
    assert "reconcile import FILE..." in text and "reconcile import --help" in text
