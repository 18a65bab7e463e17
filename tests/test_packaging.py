"""The project as a normal package: a wheel that works from anywhere, `--version`, help on every option.

The wheel is built once per session from a copy of the checkout (so the build leaves nothing behind in it) and
installed, without dependencies, into a fresh virtual environment that borrows the test environment's
site-packages for them: the commands under test are the wheel's, the libraries are the ones already here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import reconciler
from dispatcher.cli import main as dispatch
from reconciler.cli import reconcile
from reconciler.schema import find_schema_dir

REPO = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "*.egg-info", "__pycache__", "*_cache", "build", "dist", "state", "results"
)


@dataclass(frozen=True)
class Installed:
    """A virtual environment with the project's wheel installed in it."""

    wheel: Path
    bin: Path
    python: Path
    site_packages: Path


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("package")
    source = work / "source"
    shutil.copytree(REPO, source, ignore=_NOT_SOURCE)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    run([*pip, "wheel", "--quiet", "--no-deps", "--wheel-dir", str(work / "dist"), str(source)])
    (wheel,) = (work / "dist").glob("webhooks_as_code-*.whl")
    venv = work / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site_packages = Path(
        run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    )
    # Dependencies come from the test environment; its own (editable) copy of the project is never imported:
    # a path added by a .pth file is not a site directory, so its editable finder does not run.
    (site_packages / "test-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([*pip, "--python", str(python), "install", "--quiet", "--no-deps", "--no-index", str(wheel)])
    return Installed(wheel, venv / "bin", python, site_packages)


def run(args: list[str], cwd: Path | None = None, check: bool = True) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600, env=_clean_env())
    if check and done.returncode != 0:
        raise AssertionError(f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout.strip()


def _clean_env() -> dict[str, str]:
    # Nothing from the checkout may leak in through the environment.
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


@pytest.mark.slow
def test_wheel_ships_the_schemas_folder_as_package_data_byte_for_byte(installed: Installed) -> None:
    """The wheel holds exactly the top-level schemas/ files, unchanged, as reconciler/schemas/."""
    with zipfile.ZipFile(installed.wheel) as wheel:
        shipped = {
            Path(name).name: wheel.read(name)
            for name in wheel.namelist()
            if name.startswith("reconciler/schemas/") and not name.endswith("/")
        }
    assert shipped == {p.name: p.read_bytes() for p in (REPO / "schemas").iterdir() if p.is_file()}


@pytest.mark.slow
def test_installed_reconcile_checks_the_examples_from_another_directory(
    installed: Installed, tmp_path: Path
) -> None:
    """From a directory outside the checkout, the installed ``reconcile --check`` passes the examples."""
    shutil.copytree(REPO / "webhooks.d", tmp_path / "webhooks.d")
    done = subprocess.run(
        [str(installed.bin / "reconcile"), "--check"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=_clean_env(),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "webhooks valid" in done.stdout


@pytest.mark.slow
def test_installed_package_reads_its_own_schemas(installed: Installed, tmp_path: Path) -> None:
    """The installed code and the schemas it reads are the wheel's, not the checkout's."""
    code = "import reconciler, reconciler.schema as s; print(reconciler.__file__); print(s.SCHEMA_DIR)"
    module, schemas = run([str(installed.python), "-c", code], cwd=tmp_path).splitlines()
    assert Path(module).is_relative_to(installed.site_packages)
    assert Path(schemas) == installed.site_packages / "reconciler" / "schemas"


@pytest.mark.slow
def test_installed_reconcile_uses_the_bundled_event_catalogue(installed: Installed, tmp_path: Path) -> None:
    """A misspelt event type is found against the packaged catalogue (the read that used to fail)."""
    example = (REPO / "webhooks.d" / "erp-packages.yaml").read_text(encoding="utf-8")
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "erp.yaml").write_text(example.replace("package.created", "pakage.created", 1), encoding="utf-8")
    out = run([str(installed.bin / "reconcile"), "--check", "--format", "json", str(hooks)], cwd=tmp_path)
    rules = [d["rule"] for d in json.loads(out)["diagnostics"]]
    assert "unknown-event-type" in rules


@pytest.mark.slow
@pytest.mark.parametrize("command", ["reconcile", "dispatch"])
def test_installed_commands_print_the_version(installed: Installed, tmp_path: Path, command: str) -> None:
    """Both installed commands answer ``--version`` with the version in pyproject.toml."""
    assert run([str(installed.bin / command), "--version"], cwd=tmp_path) == f"{command}, version {VERSION}"


@pytest.mark.parametrize(("command", "name"), [(reconcile, "reconcile"), (dispatch, "dispatch")])
def test_commands_answer_version(command: click.Command, name: str) -> None:
    """``reconcile --version`` and ``dispatch --version`` print the installed distribution's version."""
    result = CliRunner().invoke(command, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"{name}, version {metadata.version('webhooks-as-code')}"


def iter_commands(command: click.Command, path: str) -> Iterator[tuple[str, click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from iter_commands(sub, f"{path} {name}")


def test_every_option_of_every_command_has_help() -> None:
    """Every option of reconcile, dispatch and each dispatch subcommand says what it does in --help."""
    commands = [*iter_commands(reconcile, "reconcile"), *iter_commands(dispatch, "dispatch")]
    assert {"dispatch run", "dispatch deliveries list", "dispatch receive"} <= {p for p, _ in commands}
    missing = [
        f"{path} {option.opts[0]}"
        for path, command in commands
        for option in command.params
        if isinstance(option, click.Option) and not (option.help or "").strip()
    ]
    assert missing == []
    assert all((command.help or "").strip() for _, command in commands), "a command without a docstring"


def test_checkout_reads_the_top_level_schemas_folder() -> None:
    """Run from the checkout (editable install), the schemas are the top-level schemas/ folder itself."""
    if not Path(reconciler.__file__).resolve().is_relative_to(REPO):
        pytest.skip("reconciler is not imported from this checkout")
    assert Path(str(find_schema_dir())) == REPO / "schemas"
