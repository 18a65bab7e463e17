"""Endpoint queues: per-endpoint FIFO queues of leases with a per-endpoint in-flight limit.

Workers take the next endpoint whose in-flight count is under its limit (round robin), so a slow endpoint
only ever occupies its own slots. Nothing here reads the store, the clock (but for ``wait_idle``) or HTTP.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from dispatcher.store.base import Lease


class EndpointQueues:
    """Per-endpoint FIFO queues with a per-endpoint in-flight limit, taken round robin by workers.

    An endpoint whose last attempt failed without a useful answer (timeout, connection error, 5xx, 429) is
    limited to one attempt at a time until an attempt succeeds: a dead endpoint then holds one worker, not
    ``per_endpoint`` of them, so many dead endpoints cannot take every worker from the healthy ones. An
    endpoint that has not answered yet (new, or since start-up) starts the same way, with one slot until its
    first healthy answer: a handful of receivers that stall from the first byte cannot take every worker for
    a whole timeout before they are known to fail.
    """

    def __init__(self, per_endpoint: int, max_in_flight: int | None = None) -> None:
        """``max_in_flight``: attempts in flight at most, over all endpoints (None: no bound but the
        workers')."""
        self._limit = per_endpoint
        self._max_busy = max_in_flight
        self._failing: set[str] = set()
        self._proven: set[str] = set()  # endpoints that have answered healthy at least once
        self._cond = threading.Condition()
        self._queues: dict[str, deque[Lease]] = {}
        self._inflight: dict[str, int] = {}
        self._ready: deque[str] = deque()
        self._is_ready: set[str] = set()
        self._size = 0
        self._busy = 0
        self._closed = False

    def put(self, key: str, lease: Lease) -> bool:
        """Queue a lease; False once closed (the caller releases it)."""
        with self._cond:
            if self._closed:
                return False
            self._queues.setdefault(key, deque()).append(lease)
            self._size += 1
            self._mark_ready(key)
            self._wake_next()
            return True

    def is_failing(self, key: str) -> bool:
        return key in self._failing

    def queued(self, key: str) -> int:
        with self._cond:
            q = self._queues.get(key)
            return len(q) if q else 0

    def queued_by_endpoint(self) -> dict[str, int]:
        """How many leases wait, per endpoint that has any."""
        with self._cond:
            return {key: len(q) for key, q in self._queues.items()}

    def take(self, timeout: float | None = None) -> tuple[str, Lease] | None:
        """The next lease whose endpoint has a free slot; None when closed (or on timeout)."""
        with self._cond:
            while not self._ready or self._closed or self._at_capacity():
                if self._closed or not self._cond.wait(timeout):
                    return None
            item = self._take_ready()
            self._wake_next()
            return item

    def done(self, key: str, healthy: bool = True) -> None:
        """An attempt of ``key``'s is over; ``healthy``: the endpoint answered, and not 5xx/429."""
        with self._cond:
            self._release(key, healthy)
            self._wake_next()

    def done_and_take(self, key: str, healthy: bool = True) -> tuple[str, Lease] | None:
        """``done``, then the next ready lease for the caller itself, if any (None when closed): the thread
        that completes an attempt starts the next one without waking a worker for it."""
        with self._cond:
            self._release(key, healthy)
            item = None if self._closed or not self._ready else self._take_ready()
            self._wake_next()
            return item

    def give_back(self, key: str, lease: Lease) -> None:
        """Undo a ``take`` whose lease this thread cannot attempt: first in its queue again, for a worker."""
        with self._cond:
            self._free_slot(key)
            if self._closed:  # stopping: like an attempt cut off by stop, its lease expires and is retried
                self._wake_next()  # the freed slot may be the last: whoever waits for idle must hear it
                return
            self._queues.setdefault(key, deque()).appendleft(lease)
            self._size += 1
            self._mark_ready(key)
            self._wake_next()

    def _take_ready(self) -> tuple[str, Lease]:
        """Take the first ready endpoint's next lease (the caller holds the lock and checked ``_ready``)."""
        key = self._ready.popleft()
        self._is_ready.discard(key)
        q = self._queues[key]
        lease = q.popleft()
        if not q:
            del self._queues[key]
        self._size -= 1
        self._busy += 1
        self._inflight[key] = self._inflight.get(key, 0) + 1
        self._mark_ready(key)
        return key, lease

    def _release(self, key: str, healthy: bool) -> None:
        if healthy:
            self._failing.discard(key)
            self._proven.add(key)
        else:
            self._failing.add(key)
        self._free_slot(key)
        self._mark_ready(key)

    def _free_slot(self, key: str) -> None:
        """One attempt fewer in flight, in all and at ``key`` (the caller holds the lock)."""
        self._busy -= 1
        left = self._inflight[key] - 1
        if left:
            self._inflight[key] = left
        else:
            del self._inflight[key]

    def _wake_next(self) -> None:
        """Wake one waiting worker when there is work it may take now, or every waiter when nothing is in
        flight (``wait_idle``). Called after every change, so a wake-up is never lost: each woken taker
        wakes the next while ready work and room remain (waking every worker at once would be a herd)."""
        if not self._busy:
            self._cond.notify_all()
        elif self._ready and not self._at_capacity():
            self._cond.notify()

    def _at_capacity(self) -> bool:
        return self._max_busy is not None and self._busy >= self._max_busy

    def _mark_ready(self, key: str) -> None:
        limit = self._limit if key in self._proven and key not in self._failing else 1
        if key not in self._is_ready and key in self._queues and self._inflight.get(key, 0) < limit:
            self._ready.append(key)
            self._is_ready.add(key)

    @property
    def size(self) -> int:
        return self._size

    @property
    def busy(self) -> int:
        return self._busy

    def close(self) -> list[Lease]:
        """Stop handing out work; returns the leases still queued (to be released)."""
        with self._cond:
            self._closed = True
            left = [lease for q in self._queues.values() for lease in q]
            self._queues.clear()
            self._ready.clear()
            self._is_ready.clear()
            self._size = 0
            self._cond.notify_all()
            return left

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no attempt is in flight; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True
