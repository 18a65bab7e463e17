"""The callback sender: leases stored callbacks, POSTs them, hands the answers to the recorder (a step plus
a runner).

Callbacks are stored by the outcome writer in the transaction of the outcome they report (see
``dispatcher.callbacks``); this loop only moves them from due to delivered, retried or dead. It runs on its
own thread, so a slow or dead callback endpoint never holds up deliveries: up to ``CONCURRENCY`` callbacks
are in flight at a time, sent through the engine's HTTP client (egress guard, delivery processes).
"""

from __future__ import annotations

import queue
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from dispatcher.callback_outcomes import CallbackRecorder
from dispatcher.callbacks import callback_request, decide_callback
from dispatcher.config import Snapshot
from dispatcher.errors import StoreError
from dispatcher.logs import get_logger
from dispatcher.metrics import Metrics
from dispatcher.outbound import OutboundRequest
from dispatcher.store.base import AttemptRecord, CallbackLease, Store

log = get_logger("callbacks")

#: Callbacks attempted at once (one batch per lease); the sender waits for the batch before the next.
CONCURRENCY = 8
#: The sender looks at the store at least this often (callbacks requeued by another process).
POLL_SECONDS = 1.0


class CallbackSender:
    """Sends stored callbacks. ``run_once(now)`` is one step; ``run(stop, wakeups)`` loops on a thread."""

    def __init__(
        self,
        store: Store,
        send: Callable[[OutboundRequest], AttemptRecord],
        config: Callable[[], Snapshot],
        metrics: Metrics,
        *,
        lease_seconds: float,
        clock: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self.store = store
        self.send = send
        self.config = config
        self.metrics = metrics
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.rng = rng
        self.recorder = CallbackRecorder(store, metrics)  # the outcome-writing half
        self.busy = False  # a leased batch is being sent (--stdin waits for it at EOF)

    def run_once(self, now: float, pool: ThreadPoolExecutor | None = None) -> float | None:
        """Lease the due callbacks, POST them (at once, on ``pool``), record the answers.

        Returns when to run again: now when there may be more due, else the next due time (None: none)."""
        due = self.store.next_callback_due_at()  # a read first: the lease is a write transaction
        if due is None or due > now:
            return due
        self.busy = True
        try:
            leases = self.store.lease_callbacks(now, CONCURRENCY, self.lease_seconds)
            if leases:
                self._send(leases, pool)
        finally:
            self.busy = False
        return now if len(leases) == CONCURRENCY else self.store.next_callback_due_at()

    def _send(self, leases: list[CallbackLease], pool: ThreadPoolExecutor | None) -> None:
        snapshot = self.config()
        requests = [callback_request(lease, snapshot.webhook(lease.webhook)) for lease in leases]
        records = list(pool.map(self.send, requests)) if pool else [self.send(r) for r in requests]
        outcomes = [
            decide_callback(lease, record, self.rng, self.clock())
            for lease, record in zip(leases, records, strict=True)
        ]
        self.recorder.write(leases, outcomes, self.clock())

    def run(self, stop: threading.Event, wakeups: queue.Queue[float | None]) -> None:
        """Step until ``stop`` is set or None arrives on ``wakeups`` (which new callbacks also post to)."""
        with ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="dispatch-callback") as pool:
            while not stop.is_set():
                now = self.clock()
                try:
                    next_at = self.run_once(now, pool)
                except StoreError:
                    log.exception("callbacks.store_error")
                    next_at = now + 1.0
                wait = POLL_SECONDS if next_at is None else min(POLL_SECONDS, next_at - self.clock())
                try:
                    item = wakeups.get(timeout=wait) if wait > 0 else 0.0
                except queue.Empty:
                    continue
                while item is not None:  # drain the wake-ups; None is the stop signal
                    try:
                        item = wakeups.get_nowait()
                    except queue.Empty:
                        break
                if item is None:
                    return
