"""``reconcile --watch``: a real process re-checks on every change and plans against the last good tree."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.harness import write_webhook

BIN = Path(sys.executable).parent


def _read_until(proc: subprocess.Popen[bytes], needle: str, timeout: float = 10.0) -> str:
    """Read the process's output (unbuffered, so select() sees every byte) until ``needle`` appears."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while needle.encode() not in seen:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"{needle!r} not printed within {timeout}s; got:\n{seen.decode()}"
        chunk = os.read(fd, 65536)
        if not chunk:
            raise AssertionError(f"reconcile --watch exited; output:\n{seen.decode()}")
        seen += chunk
    return seen.decode()


def test_watch_reports_each_change_with_diagnostics_and_a_plan(tmp_path: Path) -> None:
    """--watch prints a check at start, a plan after a valid change, and file:line:col for a broken save."""
    directory = tmp_path / "webhooks.d"
    write_webhook(directory, "erp", "https://erp.example.com/hook")
    proc = subprocess.Popen(
        [str(BIN / "reconcile"), "--watch", str(directory)], stdout=subprocess.PIPE, bufsize=0
    )
    try:
        _read_until(proc, "1 webhook valid")
        write_webhook(directory, "erp", "https://erp.example.com/changed")
        out = _read_until(proc, "Plan:")
        assert "spec.target_url" in out
        (directory / "erp.yaml").write_text(
            (directory / "erp.yaml").read_text().replace("target_url", "target_ur1")
        )
        out = _read_until(proc, "No plan: the tree has errors.")
        assert "erp.yaml:6:3: error[schema]" in out
    finally:
        proc.terminate()
        proc.wait(10)


def test_watch_applies_the_secret_source_rules_with_the_same_options(tmp_path: Path) -> None:
    """--watch reports '..' in a {file:} as an error and an env name outside --secret-env as a warning,
    exactly as --check with the same options does; a --secret-env allowing the name silences the warning in
    both."""
    directory = tmp_path / "webhooks.d"
    write_webhook(
        directory,
        "erp",
        "https://erp.example.com/hook",
        secret_key={"file": "../x"},
        additional_headers={"X-Env": {"env": "AWS_SECRET_ACCESS_KEY"}},
    )
    options = ["--secrets-dir", str(tmp_path / "secrets")]
    for extra, warned in (([], True), (["--secret-env", "AWS_*"], False)):
        args = [*options, *extra, str(directory)]
        check = subprocess.run(
            [str(BIN / "reconcile"), "--check", *args], capture_output=True, text=True, timeout=60
        )
        assert check.returncode == 1 and "error[secret-path-traversal]" in check.stdout
        assert ("warning[secret-env-pattern]" in check.stdout) is warned
        proc = subprocess.Popen([str(BIN / "reconcile"), "--watch", *args], stdout=subprocess.PIPE, bufsize=0)
        try:
            out = _read_until(proc, " in 1 file")  # the summary: the report's last line
            assert all(line in out.splitlines() for line in check.stdout.splitlines()), (out, check.stdout)
        finally:
            proc.terminate()
            proc.wait(10)
