"""Connections of the PostgreSQL store: a small pool, the clock offset, and LISTEN for wake-ups.

The only module besides ``postgres.py`` that imports psycopg. Errors leave as ``StoreError`` whose message
names the store by its redacted URL: a password never reaches a log line, an error or ``/status``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import psycopg

from dispatcher.errors import StoreError
from dispatcher.store.url import redact

#: The channel every dispatcher on a store listens on; a notification means "look at the store now".
CHANNEL = "dispatch_work"


class Pool:
    """Up to ``size`` connections, opened on demand; one that failed is closed and replaced by a new one."""

    def __init__(self, url: str, size: int = 8, connect_timeout: float = 10.0) -> None:
        self.url = url
        self.name = redact(url)
        self._idle: queue.LifoQueue[psycopg.Connection[Any]] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(size)
        self._timeout = connect_timeout
        self._closed = False

    def connect(self, *, autocommit: bool = False) -> psycopg.Connection[Any]:
        """A new connection of its own (outside the pool)."""
        try:
            return psycopg.connect(
                self.url, autocommit=autocommit, connect_timeout=max(1, int(self._timeout))
            )
        except psycopg.Error as exc:
            raise StoreError(f"cannot open store {self.name}: {_reason(exc)}") from None

    @contextmanager
    def transaction(self, action: str) -> Iterator[psycopg.Connection[Any]]:
        """One transaction on a pooled connection, committed at the end (rolled back on an error)."""
        if not self._slots.acquire(timeout=30):
            raise StoreError(f"store {action} failed ({self.name}): no connection free within 30 s")
        conn: psycopg.Connection[Any] | None = None
        try:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                conn = self.connect()
            try:
                with conn.transaction():
                    yield conn
            except psycopg.Error as exc:
                broken = conn.broken or conn.closed
                if broken:
                    with suppress(psycopg.Error):
                        conn.close()
                    conn = None
                raise StoreError(f"store {action} failed ({self.name}): {_reason(exc)}") from None
            except BaseException:
                if conn.broken or conn.closed:
                    conn = None
                raise
        finally:
            if conn is not None:
                if self._closed:
                    conn.close()
                else:
                    self._idle.put(conn)
            self._slots.release()

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                return
            with suppress(psycopg.Error):
                conn.close()


def _reason(exc: psycopg.Error) -> str:
    """The first line of a driver error, without anything that could repeat the connection string."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.replace("\n", " ")[:300]


def clock_offset(conn: psycopg.Connection[Any], clock: Callable[[], float]) -> float:
    """How far the database's clock is ahead of ``clock`` (seconds), measured at the round trip's middle."""
    before = clock()
    row = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
    after = clock()
    assert row is not None
    return float(row[0]) - (before + after) / 2


class Listener:
    """A thread on its own connection that LISTENs on ``CHANNEL`` and calls ``wake`` on each notification.

    A lost connection is re-opened after a second (the engine still looks at the store every second, so a
    wake-up missed meanwhile is late, never lost)."""

    def __init__(self, pool: Pool, wake: Callable[[], None]) -> None:
        self._pool = pool
        self._wake = wake
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dispatch-pg-listen", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self._pool.connect(autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._wake()  # whatever was notified while not listening
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=0.5, stop_after=1):
                            self._wake()
            except (StoreError, psycopg.Error):
                self._stop.wait(1.0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
