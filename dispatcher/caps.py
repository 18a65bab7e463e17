"""Connection caps: each listener serves at most so many connections at once, so that whoever can reach it
cannot make the dispatcher start a thread per connection until memory or descriptors run out.

On the event socket a peer also has a share of the cap (``PeerShares``): a process may hold at most a
quarter of it, so that one producer process holding connections open (idle, or never reading its
acknowledgements) leaves room for the others; a user's processes together may be given a share too
(``--max-connections-per-user``: by default the whole cap, since the usual deployment has every producer
under one user).

Past the cap a new connection is refused at once on the accepting thread (the listener says how: one line
on the event socket, an HTTP 503 on the status port) and counted; the connections already open are not
touched. A burst of refusals is logged once, not once per connection: the first refusal is logged, the next
ones are only counted until ``REFUSAL_LOG_INTERVAL_SECONDS`` have passed, and the next log line then says how
many were refused meanwhile.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from dispatcher.logs import fields, get_logger

log = get_logger("caps")

#: ``dispatch run --max-connections``: event-socket connections at once (each costs two threads).
DEFAULT_MAX_CONNECTIONS = 256
#: Connections at once on the ``--metrics`` port (fixed: scrapes and probes need a handful).
STATUS_MAX_CONNECTIONS = 32
#: At most one log line per listener this often while connections are being refused.
REFUSAL_LOG_INTERVAL_SECONDS = 10.0


class RefusalLog:
    """When to log refusals: ``refused(now)`` returns how many refusals a log line due now reports (this one
    included), or None while the line would repeat one logged less than ``interval_seconds`` ago. Pure:
    time is an argument; not thread-safe (``ConnectionCap`` holds its lock around it)."""

    def __init__(self, interval_seconds: float = REFUSAL_LOG_INTERVAL_SECONDS) -> None:
        self._interval = interval_seconds
        self._logged_at: float | None = None
        self._unlogged = 0

    def refused(self, now: float) -> int | None:
        self._unlogged += 1
        if self._logged_at is not None and now - self._logged_at < self._interval:
            return None
        count, self._unlogged, self._logged_at = self._unlogged, 0, now
        return count


class ConnectionCap:
    """How many connections of one listener are open, at most ``limit``, and (with ``shares``) how many of
    them each peer holds: ``admit(pid, uid)`` on accept (None, or why this one is refused), or
    ``try_acquire()`` where peers are not told apart (False: refuse it); ``release(pid, uid)`` when a
    connection that was admitted closes. Thread-safe.

    ``on_refused`` is called once per refusal (a metric); ``listener`` names the listener in the log."""

    def __init__(
        self,
        listener: str,
        limit: int,
        on_refused: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        shares: PeerShares | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError(f"a connection cap must be at least 1, got {limit}")
        self.listener = listener
        self.limit = limit
        self._on_refused = on_refused
        self._clock = clock
        self._shares = shares
        self._full = f"too many connections (at most {limit}); retry later"
        self._lock = threading.Lock()
        self._open = 0
        self._refusals = RefusalLog()

    @property
    def open(self) -> int:
        """Connections admitted and not yet released."""
        return self._open

    def admit(self, pid: int | None = None, uid: int | None = None) -> str | None:
        """Count one more open connection of this peer, or say why it is refused (counted and, once per
        burst, logged: a share's refusal with its reason and the peer)."""
        with self._lock:
            why = self._full if self._open >= self.limit else None
            if why is None and self._shares is not None:
                why = self._shares.try_acquire(pid, uid)
            if why is None:
                self._open += 1
                return None
            report = self._refusals.refused(self._clock())
        self._on_refused()
        if report is not None:
            # A share's refusal says whose and why; the cap's needs no more than the limit.
            peer = {} if why == self._full else {"pid": pid, "uid": uid, "error": why}
            log.warning(
                "connections.refused",
                extra=fields(listener=self.listener, limit=self.limit, refused=report, **peer),
            )
        return why

    def try_acquire(self) -> bool:
        """``admit`` for a connection whose peer is not told apart: True when admitted."""
        return self.admit() is None

    def release(self, pid: int | None = None, uid: int | None = None) -> None:
        with self._lock:
            self._open = max(0, self._open - 1)
            if self._shares is not None:
                self._shares.release(pid, uid)


#: A process may hold at most 1/PROCESS_SHARE of the event socket's connections (a user: all, unless set).
PROCESS_SHARE = 4


class PeerShares:
    """The event socket's connections open per peer, as the kernel names it (``SO_PEERCRED``): at most
    ``per_process`` for one process and ``per_user`` for one user. ``try_acquire(pid, uid)`` on accept
    returns None (admitted: ``release`` it when the connection closes) or why it is refused. A peer whose
    credentials are unknown (``uid`` None) is only under the listener's cap; a pid of 0 (not visible here)
    only under its user's share. Memory: an entry per peer with a connection open. Thread-safe (and used
    under ``ConnectionCap``'s lock)."""

    def __init__(self, limit: int, *, per_process: int | None = None, per_user: int | None = None) -> None:
        # Never above the cap (the cap would refuse first), nor a user's below one of its processes'.
        self.per_user = min(limit, per_user or limit)
        self.per_process = min(self.per_user, per_process or max(1, limit // PROCESS_SHARE))
        self._processes: Counter[tuple[int, int]] = Counter()
        self._users: Counter[int] = Counter()
        self._lock = threading.Lock()

    def try_acquire(self, pid: int | None, uid: int | None) -> str | None:
        if uid is None:
            return None
        with self._lock:
            if self._users[uid] >= self.per_user:
                return f"too many connections from this user (at most {self.per_user}); retry later"
            if pid and self._processes[(uid, pid)] >= self.per_process:
                return f"too many connections from this process (at most {self.per_process}); retry later"
            self._users[uid] += 1
            if pid:
                self._processes[(uid, pid)] += 1
        return None

    def release(self, pid: int | None, uid: int | None) -> None:
        if uid is None:
            return
        with self._lock:
            _decrement(self._users, uid)
            if pid:
                _decrement(self._processes, (uid, pid))

    @property
    def peers(self) -> tuple[int, int]:
        """Processes and users with a connection open."""
        with self._lock:
            return len(self._processes), len(self._users)


def _decrement(counts: Counter[Any], key: object) -> None:
    if counts[key] > 1:
        counts[key] -= 1
    else:
        counts.pop(key, None)  # an entry only while the peer has a connection open


#: How long a refused connection stays half-closed before it is closed: time for the client to read why.
REFUSED_LINGER_SECONDS = 1.0
#: Refused connections kept half-closed at once (past this the oldest is closed at once).
REFUSED_KEPT = 64


class Refuser:
    """Answers a connection past the cap without ever blocking the accepting thread, then closes it later.

    Closing at once would lose the answer: a client that writes its request after the answer was sent (an
    HTTP probe) would make the kernel reset the connection, and a reset discards what the client has not
    read yet. So the answer is sent, the writing half shut down (the client reads the answer, then EOF),
    and the socket is closed ``linger_seconds`` later, on a later refusal or ``close()``. At most ``kept``
    wait like that; the oldest goes first. Only the accepting thread calls it."""

    def __init__(
        self,
        linger_seconds: float = REFUSED_LINGER_SECONDS,
        kept: int = REFUSED_KEPT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._linger = linger_seconds
        self._kept = kept
        self._clock = clock
        self._waiting: deque[tuple[float, socket.socket]] = deque()
        self._lock = threading.Lock()  # close() may run while the accepting thread still refuses
        self._closed = False

    def refuse(self, conn: socket.socket, answer: bytes) -> None:
        """Send ``answer`` (it fits a fresh socket's buffer: never a partial one), half-close, keep."""
        with contextlib.suppress(OSError):
            with contextlib.suppress(BlockingIOError):
                conn.recv(1 << 16, socket.MSG_DONTWAIT)  # what the client sent already: read, not reset
            conn.send(answer, socket.MSG_DONTWAIT)
            conn.shutdown(socket.SHUT_WR)
        now = self._clock()
        with self._lock:
            if self._closed:
                conn.close()
                return
            self._waiting.append((now + self._linger, conn))
            while self._waiting and (self._waiting[0][0] <= now or len(self._waiting) > self._kept):
                self._waiting.popleft()[1].close()

    def close(self) -> None:
        """Close every connection still waiting, and any refused from now on at once."""
        with self._lock:
            self._closed = True
            while self._waiting:
                self._waiting.popleft()[1].close()
