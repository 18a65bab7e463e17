"""End to end: ``dispatch run`` under socket activation speaks the notify protocol (SPEC 3, issue #12).

A real ``dispatch run`` serves a listening socket it did not bind, either from ``systemd-socket-activate``
or from a ten-line launcher that sets LISTEN_FDS/LISTEN_PID itself, and reports READY=1 and STOPPING=1 to
an AF_UNIX datagram socket the test listens on. Deliveries go to a receiver on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.e2e.harness import Receiver, dispatch_command, event_line, write_webhook
from tests.loopback import stop_process
from tests.requires import requires

SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")

LAUNCHER = """
import os, socket, sys
kind, path, *command = sys.argv[1:]
listener = socket.socket(socket.AF_UNIX, getattr(socket, kind))
listener.bind(path)
if kind == "SOCK_STREAM":
    listener.listen(16)
if listener.fileno() != 3:
    os.dup2(listener.fileno(), 3)
os.set_inheritable(3, True)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
os.execv(command[0], command)
"""


class NotifyListener:
    """The service manager's side of the notify protocol: an AF_UNIX datagram socket in the test's dir."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    def seen(self, prefix: str) -> bool:
        return any(m.startswith(prefix) for m in self.drain())

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifyListener]:
    listener = NotifyListener(tmp_path / "notify")
    yield listener
    listener.close()


def _run_args(tmp_path: Path) -> list[str]:
    return [
        *dispatch_command(),
        "run",
        "--config",
        str(tmp_path / "webhooks.d"),
        "--state",
        str(tmp_path / "state"),
        "--allow-cidr",
        "127.0.0.0/8",
    ]


def _start(command: list[str], tmp_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = open(tmp_path / "dispatch.log", "ab")  # noqa: SIM115 - the child holds it; closed below
    try:
        return subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env={**os.environ, **env}
        )
    finally:
        log.close()


def _publish(path: Path, line: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(20)
        s.connect(str(path))
        s.sendall(line)
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer


def _stop(proc: subprocess.Popen[bytes]) -> int:
    stop_process(proc, 20)
    return proc.returncode


def _deliver_and_stop(
    proc: subprocess.Popen[bytes], sock: Path, receiver: Receiver, notify: NotifyListener, tmp_path: Path
) -> None:
    """Publish one event through the passed socket, see it delivered, SIGTERM, check the datagrams."""
    try:
        wait_until(sock.exists, timeout=15)
        answer = _publish(sock, event_line(uuid="ab" * 16))
        assert b'"deliveries":1' in answer, (tmp_path / "dispatch.log").read_text()
        got = receiver.wait_count("/hook", 1)
        assert got[0].headers["webhook-id"] == "ab" * 16
        wait_until(lambda: notify.seen("READY=1"), timeout=15)
    finally:
        code = _stop(proc)
    assert code == 0, (tmp_path / "dispatch.log").read_text()
    messages = [m.split("\n")[0] for m in notify.drain()]
    lifecycle = [m for m in messages if m in ("READY=1", "STOPPING=1")]
    assert lifecycle[0] == "READY=1"
    assert lifecycle[-1] == "STOPPING=1"
    assert messages.index("READY=1") < messages.index("STOPPING=1")


@pytest.mark.e2e
@requires(SOCKET_ACTIVATE is not None, "systemd-socket-activate (Debian package systemd)")
def test_under_systemd_socket_activate(receiver: Receiver, notify: NotifyListener, tmp_path: Path) -> None:
    """Under systemd-socket-activate, dispatch run serves the passed socket, then READY=1, then STOPPING=1."""
    assert SOCKET_ACTIVATE is not None, "systemd-socket-activate is missing: .ci/run installs systemd"
    write_webhook(tmp_path / "webhooks.d", "hook", receiver.url("/hook"))
    sock = tmp_path / "d.sock"
    command = [SOCKET_ACTIVATE, "-l", str(sock), "-E", "NOTIFY_SOCKET", *_run_args(tmp_path)]
    proc = _start(command, tmp_path, {"NOTIFY_SOCKET": str(notify.path)})
    _deliver_and_stop(proc, sock, receiver, notify, tmp_path)


@pytest.mark.e2e
def test_with_listen_fds_from_a_launcher(receiver: Receiver, notify: NotifyListener, tmp_path: Path) -> None:
    """LISTEN_FDS/LISTEN_PID set by a plain launcher replace --socket; the manager's socket file stays."""
    write_webhook(tmp_path / "webhooks.d", "hook", receiver.url("/hook"))
    sock = tmp_path / "d.sock"
    command = [sys.executable, "-c", LAUNCHER, "SOCK_STREAM", str(sock), *_run_args(tmp_path)]
    proc = _start(command, tmp_path, {"NOTIFY_SOCKET": str(notify.path)})
    _deliver_and_stop(proc, sock, receiver, notify, tmp_path)
    assert sock.exists(), "the socket belongs to the service manager: dispatch must not remove it"
    assert "source=systemd" in (tmp_path / "dispatch.log").read_text()


@pytest.mark.e2e
def test_listen_fds_of_another_pid_is_not_taken(tmp_path: Path) -> None:
    """Inherited LISTEN_* variables meant for another process do not stand in for --socket."""
    (tmp_path / "webhooks.d").mkdir()
    env = {**os.environ, "LISTEN_FDS": "1", "LISTEN_PID": "1"}
    done = subprocess.run(_run_args(tmp_path), env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "--socket PATH or --stdin" in done.stderr


@pytest.mark.e2e
def test_sighup_reload_and_watchdog_are_notified(notify: NotifyListener, tmp_path: Path) -> None:
    """SIGHUP brings RELOADING=1 (with MONOTONIC_USEC) then READY=1; WATCHDOG_USEC brings WATCHDOG=1 pings."""
    (tmp_path / "webhooks.d").mkdir()
    sock = tmp_path / "d.sock"
    command = [sys.executable, "-c", LAUNCHER, "SOCK_STREAM", str(sock), *_run_args(tmp_path)]
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"}
    proc = _start(command, tmp_path, env)
    try:
        wait_until(lambda: notify.seen("READY=1"), timeout=15)
        wait_until(lambda: notify.seen("WATCHDOG=1"), timeout=15)
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: notify.seen("RELOADING=1"), timeout=15)
        wait_until(lambda: _after_reloading(notify.drain()), timeout=15)
    finally:
        assert _stop(proc) == 0, (tmp_path / "dispatch.log").read_text()
    reloading = next(m for m in notify.messages if m.startswith("RELOADING=1"))
    assert "\nMONOTONIC_USEC=" in reloading


def _after_reloading(messages: list[str]) -> bool:
    """Whether a READY=1 follows the first RELOADING=1."""
    first = next(i for i, m in enumerate(messages) if m.startswith("RELOADING=1"))
    return "READY=1" in messages[first + 1 :]


@pytest.mark.e2e
def test_a_passed_datagram_socket_is_refused(tmp_path: Path) -> None:
    """A passed descriptor that is not a listening Unix stream socket stops dispatch run, saying so."""
    (tmp_path / "webhooks.d").mkdir()
    command = [sys.executable, "-c", LAUNCHER, "SOCK_DGRAM", str(tmp_path / "d.sock"), *_run_args(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "not a Unix stream socket" in done.stderr
