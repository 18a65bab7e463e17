"""A thread pool that starts its threads only when work needs them, up to a limit.

A delivery process may make hundreds of attempts at once (``--workers`` spread over the processes), but a
thread costs memory whether it works or waits (about 16 KiB each, measured: its stack and interpreter
state). With every thread started up front, a dispatcher whose endpoints are few or failing would carry
hundreds of idle threads. Here a thread is started when an item arrives and no started thread is free, so
the pool holds as many threads as attempts were ever in flight at once, never more than ``limit``.
Threads, once started, stay until ``close()`` (starting one per attempt would cost more than keeping it).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class GrowingPool(Generic[T]):
    """Runs ``handle(item)`` for every ``submit``-ted item on at most ``limit`` threads, started on demand."""

    def __init__(self, handle: Callable[[T], bool], limit: int, name: str = "pool") -> None:
        """``handle`` returns False to stop its thread (e.g. the parent is gone)."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit!r}")
        self._handle = handle
        self._limit = limit
        self._name = name
        self._work: queue.SimpleQueue[T | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # started threads waiting for an item and not yet promised one
        self._threads: list[threading.Thread] = []

    @property
    def started(self) -> int:
        """How many threads have been started."""
        return len(self._threads)

    @property
    def idle(self) -> int:
        """Started threads waiting for an item that none has been promised to."""
        return self._idle

    def submit(self, item: T) -> None:
        """Queue ``item``; start a thread for it when none is free and the limit allows."""
        with self._lock:
            if self._idle:
                self._idle -= 1  # that thread's next get() is this item (or one queued before it)
            elif len(self._threads) < self._limit:
                thread = threading.Thread(
                    target=self._run, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        self._work.put(item)

    def _run(self) -> None:
        while (item := self._work.get()) is not None:
            if not self._handle(item):
                return
            with self._lock:
                self._idle += 1

    def close(self) -> None:
        """Let every started thread finish the items already submitted, then stop and join them."""
        with self._lock:
            threads = list(self._threads)
        for _ in threads:
            self._work.put(None)
        for thread in threads:
            thread.join()
