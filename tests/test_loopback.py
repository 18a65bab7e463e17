"""The loopback helpers the tests and the benchmarks share (tests/loopback.py), and ``wait_until``."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.loopback import (
    LoopbackListener,
    NotReady,
    free_port,
    poll_until,
    port_accepts,
    socket_accepts,
    stop_process,
    wait_port,
    wait_socket,
)


def test_poll_until_returns_as_soon_as_the_predicate_holds() -> None:
    """A predicate true on its third call is called three times and the answer is True."""
    calls: list[int] = []

    def third() -> bool:
        calls.append(1)
        return len(calls) >= 3

    assert poll_until(third, timeout_seconds=30, interval_seconds=0.001) is True
    assert len(calls) == 3


def test_poll_until_answers_false_at_the_deadline_after_a_last_look() -> None:
    """A predicate that never holds gives False once the deadline passes, and is asked once more then."""
    calls: list[int] = []
    assert poll_until(lambda: calls.append(1), timeout_seconds=0.05, interval_seconds=0.01) is False
    assert len(calls) >= 2


def test_wait_until_fails_the_test_naming_the_condition() -> None:
    """wait_until raises AssertionError with the timeout and the predicate's name when it never holds."""

    def never() -> bool:
        return False

    with pytest.raises(AssertionError, match=r"within 0\.05s: .*never"):
        wait_until(never, timeout=0.05, interval=0.01)


def test_wait_port_sees_a_listener_and_refuses_a_closed_port() -> None:
    """wait_port returns once 127.0.0.1:PORT accepts; a port nobody listens on is NotReady at the deadline."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = int(server.getsockname()[1])
        wait_port(port, 10)
        assert port_accepts(port)
    closed = free_port()
    with pytest.raises(NotReady, match=f"127.0.0.1:{closed}"):
        wait_port(closed, 0.05)


def test_wait_socket_stops_when_the_process_exits_first(tmp_path: Path) -> None:
    """A process that exits before opening its socket makes wait_socket fail at once, naming the exit code."""
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait(30)
    with pytest.raises(NotReady, match="exited with 3"):
        wait_socket(tmp_path / "never.sock", 30, proc)


def test_wait_socket_returns_once_the_unix_socket_accepts(tmp_path: Path) -> None:
    """A listening Unix socket is seen; a path with nothing behind it is not."""
    path = tmp_path / "s.sock"
    assert not socket_accepts(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(1)
        wait_socket(path, 10)
    assert not socket_accepts(path)  # the file is left behind, but nothing listens


def test_stop_process_terminates_and_kills_only_when_it_must() -> None:
    """A child that exits on SIGTERM is not reported killed; one that ignores SIGTERM is killed after the
    timeout and reported so."""
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert stop_process(polite, 30) is False
    assert polite.returncode is not None
    stubborn = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
         "print('ready', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
    assert stop_process(stubborn, 0.2) is True
    assert stubborn.returncode == -9
    stubborn.stdout.close()
    assert stop_process(stubborn, 0.2) is False  # already gone: nothing to do


def test_loopback_listener_hands_each_connection_to_take_and_counts_it() -> None:
    """Every accepted connection is counted and given to ``_take``; close() then calls ``_release``."""
    taken: list[socket.socket] = []
    released = threading.Event()

    class Holding(LoopbackListener):
        def __init__(self) -> None:
            super().__init__("test-listener")
            self._thread.start()

        def _take(self, conn: socket.socket) -> None:
            taken.append(conn)

        def _release(self) -> None:
            for conn in taken:
                conn.close()
            released.set()

    with Holding() as listener:
        assert listener.url("/x") == f"http://127.0.0.1:{listener.port}/x"
        clients = [socket.create_connection(("127.0.0.1", listener.port), timeout=10) for _ in range(2)]
        wait_until(lambda: listener.accepted == 2 and len(taken) == 2, timeout=10)
    assert released.is_set()
    for client in clients:
        client.close()
