"""The scheduler: leases due deliveries (retries, releases, requeues) from the store into the intake.

New events never wait for it (ingest admits their leases directly). ``run_once(now)`` is one step: reclaim
expired leases when due, lease what is due now past the endpoints that have enough queued, and say when to
look again. ``wake``/``wake_all`` announce due work (a retry was scheduled, a lease released); ``run``
sleeps until the earliest of the step's answer, an announced time, the next reclaim, or a second.
"""

from __future__ import annotations

import heapq
import math
import threading
from collections.abc import Callable, Iterable

from dispatcher.errors import StoreError
from dispatcher.intake import Intake
from dispatcher.logs import fields, get_logger
from dispatcher.settings import EngineSettings
from dispatcher.store.base import Store

log = get_logger("engine")

#: How long the scheduler waits, at first and at most, for a full endpoint to drain when the only due work is
#: theirs (each lease then steps over their backlog in the store: not free when it is large).
HOLD_MIN_SECONDS = 1.0
HOLD_MAX_SECONDS = 5.0
ANNOUNCED_MAX = 10_000


class Scheduler:
    """Leases due work into the intake. ``run_once(now)`` is one step; ``run(stopping)`` loops on a thread."""

    def __init__(
        self, store: Store, intake: Intake, settings: EngineSettings, clock: Callable[[], float]
    ) -> None:
        self._store = store
        self._intake = intake
        self._settings = settings
        self._clock = clock
        self._wake = threading.Condition()
        self._announced: list[float] = []  # a heap: the times new due work was announced for (wake())
        self.next_reclaim = 0.0
        # After a lease that found nothing but the due work of endpoints with enough queued: those endpoints
        # (and any that filled since), and until when to wait for one of them to drain (or for announced work
        # to come due) before leasing.
        self._hold: tuple[frozenset[str], float] | None = None
        self._hold_seconds = HOLD_MIN_SECONDS
        #: The store is shared and holds the per-endpoint limit (set by the engine): due work it did not
        #: lease waits for a freed slot, which its NOTIFY announces (``wake``), not for a poll.
        self.shared = False

    def wake(self, at: float | None = None) -> None:
        """Look at the store at ``at`` (default: now): new work is due then."""
        self.wake_all([self._clock() if at is None else at])

    def wake_all(self, times: Iterable[float]) -> None:
        """``wake`` at each of these times."""
        with self._wake:
            earliest = self._announced[0] if self._announced else float("inf")
            for at in {math.ceil(t * 10) / 10 for t in times}:  # to the next 0.1 s: fewer distinct times
                heapq.heappush(self._announced, at)
            if len(self._announced) > ANNOUNCED_MAX:  # keep the earliest; a hold ends within 5 s anyway
                self._announced = heapq.nsmallest(ANNOUNCED_MAX // 2, self._announced)
            if self._announced and self._announced[0] < earliest:
                self._wake.notify()

    def run_once(self, now: float) -> float | None:
        """One step: reclaim expired leases when due, lease due deliveries into the intake.

        Returns when to run again (None: only when woken or at the next reclaim).
        """
        s = self._settings
        if now >= self.next_reclaim:
            n = self._store.reclaim_expired(now)
            if n:
                log.info("leases.reclaimed", extra=fields(count=n))
                self._hold = None  # due again now
            self.next_reclaim = now + s.reclaim_interval_seconds
        full = self._intake.full_endpoints()
        announced = False  # work announced by wake() that is due by now ends a hold
        with self._wake:
            while self._announced and self._announced[0] <= now:
                heapq.heappop(self._announced)
                announced = True
        if self._hold is not None:
            keys, until = self._hold
            if now < until and not announced and keys <= full:
                # Nothing new since a fruitless lease, and none of them drained. An endpoint that fills
                # meanwhile is watched too: ingest leaves its new deliveries in the store, due now and
                # announced to nobody, and its drain is what makes them leasable.
                self._hold = (keys | full, until)
                return min(until, now + 0.05)
            self._hold = None
        room = self._intake.room()
        if room <= 0:
            return now + 0.05  # queues full: look again shortly
        limit = min(room, s.lease_batch)
        leases = self._store.lease(now, limit, s.lease_seconds, self._intake.webhooks_at(full))
        if leases:
            self._intake.admit(leases)
        if len(leases) == limit:
            self._hold_seconds = HOLD_MIN_SECONDS
            return now  # there may be more due right now
        if full:
            # What is due now may be only the full endpoints' backlog (the store's next due time would say
            # "now" forever): wait for one of them to drain, a wake, or a while, and back off when idle.
            self._hold = (full, now + self._hold_seconds)
            self._hold_seconds = HOLD_MIN_SECONDS if leases else min(HOLD_MAX_SECONDS, self._hold_seconds * 2)
            return now + 0.05
        self._hold_seconds = HOLD_MIN_SECONDS
        due = self._store.next_due_at()
        if self.shared and due is not None and due <= now:
            return None  # due but over the shared endpoint limits: a NOTIFY (a freed slot) wakes us
        return due

    def run(self, stopping: threading.Event) -> None:
        """Step, then sleep until the next step is due or a wake, until ``stopping`` is set."""
        while not stopping.is_set():
            now = self._clock()
            try:
                next_at = self.run_once(now)
            except StoreError:
                log.exception("scheduler.store_error")
                next_at = now + 1.0
            wake_at = min(next_at if next_at is not None else float("inf"), self.next_reclaim)
            # At most a second: work requeued by another process (`dispatch deliveries retry`) shows up in the
            # store without waking us; new events never wait for this (they are submitted directly).
            with self._wake:
                announced = self._announced[0] if self._announced else float("inf")
                timeout = min(1.0, max(0.0, min(wake_at, announced) - self._clock()))
                if timeout > 0:
                    self._wake.wait(timeout)
