"""The systemd kit (deploy/systemd): units systemd accepts, wired for activation and the notify protocol."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from dispatcher.cli import run as run_command
from tests.requires import requires

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
ANALYZE = shutil.which("systemd-analyze")


def _settings(unit: Path) -> dict[str, list[str]]:
    """KEY -> every value (units repeat keys), with backslash-continued lines joined; comments dropped."""
    text = unit.read_text().replace("\\\n", " ")
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def _exec_start() -> list[str]:
    (line,) = _settings(UNITS / "dispatch.service")["ExecStart"]
    return shlex.split(line)


def test_service_is_notify_with_a_watchdog_and_a_reload() -> None:
    """Type=notify (READY=1 gates start-up), WatchdogSec, and reload as SIGHUP to the main process."""
    s = _settings(UNITS / "dispatch.service")
    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["main"]
    assert s["WatchdogSec"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["Requires"] == ["dispatch.socket"]


def test_exec_start_uses_the_activated_socket_and_real_options() -> None:
    """ExecStart has no --socket (LISTEN_FDS replaces it) and every option is one `dispatch run` knows."""
    argv = _exec_start()
    assert argv[0].endswith("/dispatch")
    assert argv[1] == "run"
    assert "--socket" not in argv
    run_command.make_context("run", [a.replace("${STATE_DIRECTORY}", "/var/lib/dispatch") for a in argv[2:]])


def test_socket_is_one_listening_stream_for_the_oms_group() -> None:
    """One ListenStream path, Accept=no (one long-lived dispatcher), mode 0660."""
    s = _settings(UNITS / "dispatch.socket")
    assert len(s["ListenStream"]) == 1
    assert s["ListenStream"][0].startswith("/run/")
    assert s["Accept"] == ["no"]
    assert s["SocketMode"] == ["0660"]


def test_credentials_come_from_load_credential() -> None:
    """Secrets are loaded with LoadCredential= (the default --secrets-dir is $CREDENTIALS_DIRECTORY)."""
    s = _settings(UNITS / "dispatch.service")
    assert s["LoadCredential"]
    assert all(":" in v and not v.startswith("/") for v in s["LoadCredential"])


@requires(ANALYZE is not None, "systemd-analyze (Debian package systemd)")
def test_systemd_analyze_verify_reports_nothing(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts both units without one warning (ExecStart pointed at this venv)."""
    assert ANALYZE is not None, "systemd-analyze is missing: .ci/run installs systemd"
    dispatch = Path(sys.executable).parent / "dispatch"
    for name in ("dispatch.socket", "dispatch.service"):
        text = (UNITS / name).read_text().replace("/opt/webhooks-as-code/.venv/bin/dispatch", str(dispatch))
        (tmp_path / name).write_text(text)
    done = subprocess.run(
        [ANALYZE, "verify", str(tmp_path / "dispatch.socket"), str(tmp_path / "dispatch.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    ours = [line for line in done.stderr.splitlines() if str(tmp_path) in line]
    assert done.returncode == 0 and ours == [], done.stderr
