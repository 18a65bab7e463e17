"""Loopback helpers the tests and the benchmarks share: free ports, polling with a deadline, waiting for a TCP
port or a Unix socket to accept, the installed ``dispatch`` command, stopping a child process, a plain GET,
and a TCP listener whose subclasses decide what to do with each connection.

Everything here talks to 127.0.0.1 or to a Unix socket path the caller chose, never further. The tests
import it as ``tests.loopback`` (pytest puts the checkout on ``sys.path``); the benchmarks, run as
``python bench/NAME.py`` from a checkout, put the checkout on ``sys.path`` in ``bench/processes.py`` and
import it the same way. It imports only the standard library, so both work on a clean clone.
"""

from __future__ import annotations

import contextlib
import http.client
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

LOOPBACK = "127.0.0.1"
BIN = Path(sys.executable).parent  # the venv's bin: the installed console scripts


class NotReady(Exception):
    """A port or socket did not accept within its deadline, or the process meant to open it exited first."""


def poll_until(
    predicate: Callable[[], object], timeout_seconds: float, interval_seconds: float = 0.02
) -> bool:
    """Call ``predicate`` until it returns something true; False when ``timeout_seconds`` pass first.

    The predicate is always called at least once, and once more at the deadline, so a condition that holds by
    then is never reported as missed.
    """
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_seconds)
    return bool(predicate())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def loopback_url(port: int, path: str) -> str:
    """``http://127.0.0.1:PORT/path``."""
    return f"http://{LOOPBACK}:{port}{path}"


def _check_alive(proc: subprocess.Popen[bytes] | None, what: str) -> None:
    if proc is not None and proc.poll() is not None:
        raise NotReady(f"process exited with {proc.returncode} before {what}")


def port_accepts(port: int) -> bool:
    """Whether a TCP connection to 127.0.0.1:PORT is accepted now."""
    with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.5):
        return True
    return False


def socket_accepts(path: Path) -> bool:
    """Whether a connection to the Unix socket at ``path`` is accepted now."""
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def unix_client(path: Path, timeout_seconds: float = 20.0) -> socket.socket:
    """A client connected to the Unix stream socket at ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_seconds)
    sock.connect(str(path))
    return sock


def wait_port(port: int, timeout_seconds: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until 127.0.0.1:PORT accepts; ``NotReady`` on the deadline or when ``proc`` exits first."""

    def ready() -> bool:
        _check_alive(proc, f"listening on port {port}")
        return port_accepts(port)

    if not poll_until(ready, timeout_seconds):
        raise NotReady(f"nothing listens on {LOOPBACK}:{port} after {timeout_seconds:g}s")


def wait_socket(
    path: Path,
    timeout_seconds: float,
    proc: subprocess.Popen[bytes] | None = None,
    also: Callable[[], bool] = lambda: True,
) -> None:
    """Wait until the Unix socket at ``path`` accepts (and ``also()`` holds); ``NotReady`` on the deadline or
    when ``proc`` exits first."""

    def ready() -> bool:
        _check_alive(proc, f"opening {path}")
        return socket_accepts(path) and also()

    if not poll_until(ready, timeout_seconds):
        raise NotReady(f"{path} did not accept connections within {timeout_seconds:g}s")


def console_script(name: str) -> Path:
    """The installed console script ``name`` next to this interpreter (it may not exist)."""
    return BIN / name


def dispatch_command() -> list[str]:
    """The installed ``dispatch`` console script (the real thing a user runs), else ``python -m``."""
    script = console_script("dispatch")
    return [str(script)] if script.exists() else [sys.executable, "-m", "dispatcher.cli"]


def stop_process(proc: subprocess.Popen[bytes], timeout_seconds: float) -> bool:
    """SIGTERM, then SIGKILL after ``timeout_seconds``; True when it had to be killed."""
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        return True
    return False


def http_get(port: int, path: str, timeout_seconds: float = 10.0) -> bytes:
    """GET from a loopback server; RuntimeError unless it answers 200 (http.client: no proxy from the
    environment can get involved)."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout_seconds)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: HTTP {response.status}")
        return body
    finally:
        conn.close()


class LoopbackListener:
    """A TCP server on 127.0.0.1 whose thread accepts connections and hands each to ``_take`` (counted in
    ``accepted``); ``close()`` stops accepting, then ``_release`` lets go of what ``_take`` kept. A subclass
    starts ``self._thread`` once its own state is set."""

    def __init__(self, name: str, backlog: int = 128) -> None:
        self._sock = socket.create_server((LOOPBACK, 0), backlog=backlog)
        self._sock.settimeout(0.2)
        self.port = int(self._sock.getsockname()[1])
        self._stop = threading.Event()
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept, name=name, daemon=True)

    def url(self, path: str = "/hook") -> str:
        """``http://127.0.0.1:PORT/path`` for this listener."""
        return loopback_url(self.port, path)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self._take(conn)

    def _take(self, conn: socket.socket) -> None:
        """Keep, serve or close one accepted connection (runs on the accepting thread)."""
        raise NotImplementedError

    def _release(self) -> None:
        """Nothing kept by default."""

    def close(self) -> None:
        """Stop accepting, close the listening socket, then ``_release``."""
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
        self._release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
