"""Hostile files in the watched tree of a real ``dispatch run``: small files, huge work, and outside links.

Each hostile file is written next to a working webhook while the dispatcher runs. The old table must keep
serving (events acknowledged and delivered to a loopback receiver), ``/status`` must say the last reload
failed and why, SIGHUP must not kill the process, SIGTERM must still stop it with exit 0, and a restart with
the file present must fail with the located diagnostic and no traceback. The outside file's content must
appear in no output. Nothing here talks to anything but 127.0.0.1 and Unix sockets under ``tmp_path``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_until
from tests.e2e.harness import DispatchProcess, Receiver, dispatch_command, event_line, write_webhook
from tests.loopback import free_port

SECRET_CONTENT = "TOPSECRET-OUTSIDE-CONTENT"


@dataclass(frozen=True)
class Hostile:
    """How to plant one hostile file, and the diagnostic it must produce (``file:line:col: error[rule]``)."""

    name: str
    plant: Callable[[Path, Path], None]  # (config dir, a directory outside it)
    located: str


def _bomb(config: Path, _outside: Path) -> None:
    lines = ["    l0: &l0 [" + ", ".join(["lol"] * 10) + "]"]
    lines += [f"    l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 9)]
    text = "apiVersion: webhooks/v1\nkind: Webhook\nmetadata:\n  name: bomb\n  labels:\n" + "\n".join(lines)
    (config / "bomb.yaml").write_text(text + "\nspec:\n  target_url: https://erp.example.com/\n")


def _digits(config: Path, _outside: Path) -> None:
    text = (
        "apiVersion: webhooks/v1\nkind: Webhook\nmetadata:\n  name: digits\nspec:\n"
        "  target_url: https://erp.example.com/\n  event_type: package.created\n"
        "  config: {timeout: " + "9" * 10_000 + "}\n"
    )
    (config / "digits.yaml").write_text(text)


def _large(config: Path, _outside: Path) -> None:
    (config / "large.yaml").write_bytes(b"# padding\n" * (2 * 1024 * 1024 // 10 + 1))


def _link(config: Path, outside: Path) -> None:
    target = outside / "passwd"
    target.write_text(f"{SECRET_CONTENT}: [\n")  # a YAML error that would quote it, if it were ever read
    (config / "passwd.yaml").symlink_to(target)


HOSTILE = [
    Hostile("alias-bomb", _bomb, "bomb.yaml:10:9: error[yaml-alias-budget]"),
    Hostile("10000-digits", _digits, "digits.yaml:8:21: error[number-range]"),
    Hostile("2-mib-file", _large, "large.yaml:1:1: error[file-too-large]"),
    Hostile("outside-symlink", _link, "passwd.yaml:1:1: error[symlink-outside]"),
]


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    config, outside = tmp_path / "webhooks.d", tmp_path / "outside"
    config.mkdir()
    outside.mkdir()
    return config, outside


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:  # loopback only
        return json.loads(resp.read())


def _failures(base: str) -> float:
    with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:  # loopback only
        for line in resp.read().decode().splitlines():
            if line.startswith('dispatch_config_reloads_total{result="failure"}'):
                return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize("hostile", HOSTILE, ids=[h.name for h in HOSTILE])
def test_a_hostile_file_under_dispatch_run_keeps_the_last_good_table(
    hostile: Hostile, receiver: Receiver, dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    """The old table keeps routing and delivering, /status reports the failed reload with the located
    reason, SIGHUP leaves the process alive, and SIGTERM still exits 0."""
    config, outside = dirs
    write_webhook(config, "good", receiver.url("/good"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = DispatchProcess(config, tmp_path / "state", extra_args=["--metrics", f"127.0.0.1:{port}"])
    try:
        assert proc.publish([event_line()])[0]["deliveries"] == 1
        receiver.wait_count("/good", 1)
        good = _get_json(base + "/status")["active_revision"]

        hostile.plant(config, outside)
        wait_until(lambda: _get_json(base + "/status")["last_reload"]["successful"] is False, timeout=10)
        status = _get_json(base + "/status")
        assert status["active_revision"] == good
        assert hostile.located.split(": ")[0] in status["last_reload"]["error"]
        assert hostile.located.split("[")[1].rstrip("]") in status["last_reload"]["error"]

        acks = proc.publish([event_line(), event_line()])
        assert [a["deliveries"] for a in acks] == [1, 1]
        receiver.wait_count("/good", 3)

        before = _failures(base)
        proc.signal(signal.SIGHUP)
        wait_until(lambda: _failures(base) > before, timeout=10)  # the SIGHUP reload ran, and failed
        assert proc.proc.poll() is None
        assert _get_json(base + "/status")["last_reload"]["successful"] is False
        assert proc.publish([event_line()])[0]["deliveries"] == 1
        receiver.wait_count("/good", 4)
    finally:
        code = proc.stop(timeout=30)
    logs = proc.log_path.read_text(errors="replace")
    assert code == 0, logs[-3000:]
    assert hostile.located.split(": ")[0] in logs
    assert "Traceback" not in logs
    assert SECRET_CONTENT not in logs


@pytest.mark.parametrize("hostile", HOSTILE, ids=[h.name for h in HOSTILE])
def test_a_restart_with_a_hostile_file_fails_with_the_located_diagnostic(
    hostile: Hostile, dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    """Starting with the hostile file present exits non-zero, prints file:line:col and the rule on stderr,
    and no traceback; the outside file's content is in no output."""
    config, outside = dirs
    write_webhook(config, "good", "http://127.0.0.1:9/never")
    hostile.plant(config, outside)
    state = tmp_path / "state"
    args = [*dispatch_command(), "run", "--config", str(config), "--state", str(state), "--stdin"]
    run = subprocess.run(args, input="", capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert hostile.located in run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    assert SECRET_CONTENT not in run.stderr + run.stdout


def test_dispatch_run_takes_the_file_size_limit_as_a_flag(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    """``dispatch run --max-file-bytes N`` refuses a config file over N bytes at start-up with the located
    ``file-too-large`` diagnostic, as ``reconcile --max-file-bytes`` does; the default admits it."""
    config, _ = dirs
    path = write_webhook(config, "good", "http://127.0.0.1:9/never")
    size = path.stat().st_size
    base = [*dispatch_command(), "run", "--config", str(config), "--stdin"]
    small = [*base, "--state", str(tmp_path / "a"), "--max-file-bytes", str(size - 1)]
    run = subprocess.run(small, input="", capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert f"{path.name}:1:1: error[file-too-large]" in run.stderr
    default = subprocess.run(
        [*base, "--state", str(tmp_path / "b")], input="", capture_output=True, timeout=120
    )
    assert default.returncode == 0, default.stderr
