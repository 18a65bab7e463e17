"""The outcome writer: records what happened to leases, in batches, one store transaction each.

Workers (and the intake, for leases it gives back) ``put`` outcomes; one thread takes every outcome waiting
at that moment and ``write_once`` records them with the callbacks they trigger (same transaction: a recorded
outcome's callback is never lost). It then tells ``on_due`` when the retries and releases it recorded are due
(the scheduler's wake-ups) and ``on_callbacks`` that callbacks were stored (the callback sender's). Nothing
here leases work or makes HTTP requests.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from dispatcher.attempt import Decision
from dispatcher.callbacks import build_callback, new_callback_id
from dispatcher.config import Snapshot
from dispatcher.errors import StoreError
from dispatcher.logs import fields, get_logger
from dispatcher.metrics import Metrics
from dispatcher.store.base import Lease, Outcome, OutcomeKind, Store
from reconciler.model import Webhook

log = get_logger("engine")

#: Outcomes recorded in one transaction at most.
BATCH_MAX = 1000
#: How long the writer lets outcomes gather after the first one of a batch.
COALESCE_SECONDS = 0.005


@dataclass(frozen=True)
class Done:
    """One handled lease: its outcome and, for an attempt's decision, what a callback needs."""

    outcome: Outcome
    hook: Webhook | None = None
    lease: Lease | None = None
    decision: Decision | None = None


class OutcomeWriter:
    """Records outcomes in batches. ``put`` from any thread; ``run()`` on one thread until ``close()``."""

    def __init__(
        self,
        store: Store,
        config: Callable[[], Snapshot],
        metrics: Metrics,
        *,
        on_due: Callable[[list[float]], None],
        on_callbacks: Callable[[float], None],
        stopping: threading.Event,
        clock: Callable[[], float],
    ) -> None:
        self._store = store
        self._config = config
        self._metrics = metrics
        self._on_due = on_due
        self._on_callbacks = on_callbacks
        self._stopping = stopping
        self._clock = clock
        self._queue: queue.Queue[Done | None] = queue.Queue()
        self._unwritten = 0  # outcomes put and not yet recorded
        self._unwritten_lock = threading.Lock()
        self._debug = log.isEnabledFor(10)

    def put(self, done: Done) -> None:
        """Hand one outcome over to be recorded."""
        with self._unwritten_lock:
            self._unwritten += 1
        self._queue.put(done)

    @property
    def unwritten(self) -> int:
        """Outcomes put and not yet recorded (or given up at stop)."""
        with self._unwritten_lock:
            return self._unwritten

    def close(self) -> None:
        """Ask ``run()`` to return once the outcomes put before this call are written."""
        self._queue.put(None)

    def run(self) -> None:
        """Write batches until ``close()``."""
        closed = False
        while not closed:
            batch, closed = self.take()
            if batch:
                self.write_once(batch, self._clock())

    def take(self, *, block: bool = True) -> tuple[list[Done], bool]:
        """The outcomes waiting now (at most ``BATCH_MAX``; with ``block``, waiting for the first one), and
        whether ``close()`` was seen."""
        batch: list[Done] = []
        closed = False
        if block:
            first = self._queue.get()
            if first is None:
                closed = True
            else:
                batch.append(first)
                # Let the outcomes of the next few milliseconds join this one: one transaction and one
                # wake-up of this thread for many attempts instead of one each (measured: the main
                # process's CPU per delivery fell by a fifth at full speed). A plain sleep, so the puts
                # meanwhile wake nobody.
                time.sleep(COALESCE_SECONDS)
        while len(batch) < BATCH_MAX:
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                break
            if more is None:
                closed = True
                continue
            batch.append(more)
        return batch, closed

    def write_once(self, batch: list[Done], now: float) -> None:
        """Record one batch (with its callbacks) in one transaction, then announce what became due."""
        snapshot = self._config()
        outcomes = [_with_callback(d, _recheck_hold(d, snapshot, now), now) for d in batch]
        try:
            self._record(outcomes, now)
        finally:
            with self._unwritten_lock:
                self._unwritten -= len(batch)
        due_times: list[float] = []  # retries and releases recorded: due work for the scheduler, then
        for done, outcome in zip(batch, outcomes, strict=True):
            kind = outcome.kind
            self._metrics.deliveries.labels(kind.value if kind is not OutcomeKind.RETRY else "retry").inc()
            if kind in (OutcomeKind.RETRY, OutcomeKind.RELEASE):
                due_times.append(now if outcome.next_attempt_at is None else outcome.next_attempt_at)
            self._log_outcome(done, now)
        if due_times:
            self._on_due(due_times)
        if any(o.callback is not None for o in outcomes):
            self._on_callbacks(now)

    def _record(self, outcomes: list[Outcome], now: float) -> None:
        """Record ``outcomes``, trying again each second while the store fails (a full disk, say): dropped,
        delivered attempts would be sent again and retries would wait for their leases to expire. At stop it
        gives up: the leases expire and the deliveries are attempted again (at-least-once)."""
        failures = 0
        while True:
            try:
                self._store.record(outcomes, now)
                return
            except StoreError as exc:
                if failures == 0:
                    log.exception("outcomes.store_error", extra=fields(count=len(outcomes)))
                else:
                    log.error("outcomes.store_error", extra=fields(count=len(outcomes), error=str(exc)))
                failures += 1
            if self._stopping.wait(1.0):
                return

    def _log_outcome(self, done: Done, now: float) -> None:
        o = done.outcome
        if o.kind is OutcomeKind.RELEASE or (o.kind is OutcomeKind.DELIVERED and not self._debug):
            return
        a = o.attempt
        values = {
            "delivery": o.delivery_id,
            "webhook": done.lease.webhook if done.lease else None,
            "event_uuid": done.lease.event_uuid if done.lease else None,
            "status_code": a.status_code if a else None,
            "duration_ms": round(a.duration_seconds * 1000, 1) if a else None,
        }
        if a and a.error:
            values["error"] = a.error
        if o.kind is OutcomeKind.RETRY and o.next_attempt_at is not None:
            values["retry_in_s"] = round(o.next_attempt_at - (a.started_at if a else now), 1)
        if o.reason:
            values["reason"] = o.reason
        # Successes are routine (debug: thousands a second would drown the log); failures are news.
        level = {OutcomeKind.DEAD: 30, OutcomeKind.DELIVERED: 10}.get(o.kind, 20)
        log.log(level, f"delivery.{o.kind.value}", extra=fields(**values))


def _with_callback(done: Done, outcome: Outcome, now: float) -> Outcome:
    """The outcome with the callback it triggers, stored in the same transaction (never lost once the
    outcome is recorded)."""
    hook, lease, decision = done.hook, done.lease, done.decision
    if hook is None or lease is None or decision is None or outcome is not decision.outcome:
        return outcome
    callback = build_callback(lease, hook, decision, now, new_callback_id())
    return outcome if callback is None else replace(outcome, callback=callback)


def _recheck_hold(done: Done, snapshot: Snapshot, now: float) -> Outcome:
    """A hold decided just before the webhook was re-activated becomes a release (never stuck held)."""
    o = done.outcome
    if o.kind is OutcomeKind.HOLD and done.lease is not None:
        hook = snapshot.webhook(done.lease.webhook)
        if hook is not None and hook.active:
            return Outcome(o.delivery_id, o.lease_id, OutcomeKind.RELEASE, next_attempt_at=now)
    return o
