"""`reconcile import` on hostile exports: no traceback, no secret in any output, nothing clobbered."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from reconciler.importcli import import_command

SECRET = "hostile-secret-Qq77"


def run_on(tmp_path: Path, export: Any, *extra: str, raw: str | None = None) -> Result:
    path = tmp_path / "export.json"
    path.write_text(raw if raw is not None else json.dumps(export))
    args = [str(path), "--out", str(tmp_path / "out"), "--secrets-out", str(tmp_path / "s.env"), *extra]
    return CliRunner().invoke(import_command, args)


def row(**changes: Any) -> dict[str, Any]:
    retry = {"choice": "fixed", "kwargs": {"seconds": 60}}
    base = {"id": 1, "target_url": "https://hooks.example.com/in", "event_type": "package.created"}
    base.update(secret_key=SECRET, retry_countdown_config=retry)
    return {**base, **changes}


@pytest.mark.parametrize(
    "export",
    [
        [row(secret_key=SECRET + "\nX-Injected: 1")],
        [row(additional_headers={"X-Evil\r\nHost": SECRET})],
        [row(additional_headers={"X-Token": SECRET + "\r\nHost: evil"})],
        [row(config={"auth": {"auth_type": "basic", "username": "u", "password": SECRET + "\n"}})],
        [row(config={"auth": SECRET})],
        [row(event_type=SECRET.upper())],
        [row(target_url="javascript:alert(1)")],
        [row(retry_countdown_config={"choice": "fixed", "kwargs": {"seconds": -5}})],
        [row(additional_headers=[SECRET])],
        [row(), row()],  # the same id twice
        [{"model": "whisperer.webhook", "pk": 1, "fields": [SECRET]}],
        [42, None, "text"],
    ],
)
def test_hostile_rows_are_refused_without_a_traceback_or_the_secret(tmp_path: Path, export: Any) -> None:
    """Each hostile row is an error on stderr (exit 1), nothing is written, and the secret is never shown."""
    result = run_on(tmp_path, export)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and SECRET not in result.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "s.env").exists()


def test_a_deeply_nested_export_is_an_error_not_a_crash(tmp_path: Path) -> None:
    """JSON nested beyond the parser's depth is reported as not an export (exit 1), never a traceback."""
    result = run_on(tmp_path, None, raw="[" * 100_000 + "]" * 100_000)
    assert result.exit_code == 1 and "not a JSON export" in result.stderr


def test_a_symlinked_secrets_file_is_replaced_not_written_through(tmp_path: Path) -> None:
    """--force replaces a symlink at --secrets-out by a new 0600 file; the file it pointed at is untouched."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    (tmp_path / "s.env").symlink_to(victim)
    refused = run_on(tmp_path, [row()])
    assert refused.exit_code == 1 and "exists" in refused.stderr
    forced = run_on(tmp_path, [row()], "--force")
    assert forced.exit_code == 0, forced.output
    assert victim.read_text() == "keep me\n"
    assert not (tmp_path / "s.env").is_symlink()
    assert oct(os.stat(tmp_path / "s.env").st_mode & 0o777) == oct(0o600)
    assert SECRET in (tmp_path / "s.env").read_text()


def test_a_dangling_symlink_at_a_webhook_path_is_not_followed(tmp_path: Path) -> None:
    """A dangling symlink where a webhook file would go counts as existing: refused without --force."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "hooks-example-com-package-created-1.yaml").symlink_to(tmp_path / "elsewhere.yaml")
    result = run_on(tmp_path, [row()])
    assert result.exit_code == 1 and "exists" in result.stderr
    assert not (tmp_path / "elsewhere.yaml").exists()
