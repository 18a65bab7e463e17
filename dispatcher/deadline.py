"""One deadline per attempt: ``config.timeout`` bounds the whole exchange, not each socket operation.

A socket timeout restarts with every ``recv``: a receiver trickling its status line a byte at a time, sending
``100 Continue`` again and again or an endless header block, would hold a delivery thread for as long as it
likes while never letting a single read time out. So the attempt's thread carries an absolute deadline
(``attempt_deadline``), and every blocking step of the attempt is given the time *left* until it: the DNS
lookup (``call_within``), the connect and TLS handshake (``time_left``), each ``sendall``, each ``recv`` of
the response, 1xx answers, status line, headers and body alike (``DeadlineSocketIO``). Past the deadline a
step raises ``TimeoutError`` at once, which the HTTP client reports like any timeout.

A thread-local rather than an argument: the reads happen deep inside ``http.client`` and urllib3, which know
nothing of it; the attempt runs start to finish on one thread, and the deadline is cleared when it ends.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

_current = threading.local()


@contextmanager
def attempt_deadline(timeout_seconds: float) -> Iterator[float]:
    """Run the block as one attempt that must end within ``timeout_seconds``; yields the deadline."""
    previous = getattr(_current, "deadline", None)
    deadline = time.monotonic() + timeout_seconds
    _current.deadline = deadline
    try:
        yield deadline
    finally:
        _current.deadline = previous


def current_deadline() -> float | None:
    """The running attempt's monotonic deadline on this thread, or None outside an attempt."""
    deadline: float | None = getattr(_current, "deadline", None)
    return deadline


def time_left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (None: no deadline). Raises ``TimeoutError`` once it has passed."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the attempt's deadline has passed")
    return left


def bound(sock: socket.socket, deadline: float | None) -> None:
    """Give the next blocking operation on ``sock`` only the time left until ``deadline``."""
    if deadline is not None:
        sock.settimeout(time_left(deadline))


def call_within(deadline: float | None, call: Callable[[], T]) -> T:
    """``call()``, given up on at ``deadline`` (``TimeoutError``) for calls that take no timeout, such as
    ``getaddrinfo``: it runs on a helper thread, which is left to finish on its own when time runs out."""
    if deadline is None:
        return call()
    outcome: list[Any] = []
    done = threading.Event()

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # handed to the waiting thread, which raises it
            outcome.append((False, exc))
        finally:
            done.set()

    threading.Thread(target=run, name="attempt-resolve", daemon=True).start()
    if not done.wait(time_left(deadline)):
        raise TimeoutError("the attempt's deadline has passed")
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


class DeadlineSocketIO(socket.SocketIO):
    """``socket.makefile("rb")``'s raw reader, except that each read gets only the time left."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__(sock, "rb")
        self._deadline = deadline
        self._socket = sock

    def readinto(self, b: Any) -> int | None:
        """Read into ``b`` within the time left; ``TimeoutError`` once the deadline has passed."""
        self._socket.settimeout(time_left(self._deadline))
        return super().readinto(b)


class DeadlineSocket:
    """What ``http.client.HTTPResponse`` is handed instead of the socket: its ``makefile`` (the only thing
    the response uses) returns a buffered reader whose reads end at the attempt's deadline."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> Any:
        """A buffered binary reader over the socket, bounded by the deadline."""
        if mode != "rb":
            raise ValueError(f"unsupported mode {mode!r}")
        raw = DeadlineSocketIO(self._sock, self._deadline)
        # What socket.makefile does: the socket's file descriptor stays open until this reader is closed, even
        # if the connection closes the socket first (an answer with "Connection: close" is read after that).
        self._sock._io_refs += 1  # type: ignore[attr-defined]
        return io.BufferedReader(raw, io.DEFAULT_BUFFER_SIZE)
