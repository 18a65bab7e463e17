"""Writing callback outcomes: records a sent batch's answers in the store, then counts and logs them.

The callback sender (``dispatcher.callback_sender``) leases and sends; this module is the other half, as the
outcome writer (``dispatcher.outcomes``) is for deliveries. A failed callback is news (a warning naming the
callback, its webhook, the status or error and when it is tried again); a delivered one is a metric only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dispatcher.logs import fields, get_logger
from dispatcher.metrics import Metrics
from dispatcher.store.base import CallbackLease, CallbackOutcome, OutcomeKind, Store

log = get_logger("callbacks")


class CallbackRecorder:
    """Records callback outcomes in one transaction per batch, then counts and logs each."""

    def __init__(self, store: Store, metrics: Metrics) -> None:
        self.store = store
        self.metrics = metrics

    def write(self, leases: Sequence[CallbackLease], outcomes: Sequence[CallbackOutcome], now: float) -> None:
        """Record ``outcomes`` (one per lease, same order); StoreError propagates (the leases then expire
        and the callbacks are sent again: at-least-once)."""
        self.store.record_callbacks(outcomes, now)
        for lease, outcome in zip(leases, outcomes, strict=True):
            self._count(lease, outcome, now)

    def _count(self, lease: CallbackLease, outcome: CallbackOutcome, now: float) -> None:
        if outcome.kind is OutcomeKind.DELIVERED:
            self.metrics.callbacks.labels("ok").inc()
            return
        self.metrics.callbacks.labels("failed" if outcome.kind is OutcomeKind.RETRY else "dead").inc()
        a = outcome.attempt
        values: dict[str, Any] = {"callback": lease.callback_id, "webhook": lease.webhook}
        values["status_code"] = a.status_code if a else None
        if a and a.error:
            values["error"] = a.error
        if outcome.next_attempt_at is not None:
            values["retry_in_s"] = round(outcome.next_attempt_at - now, 1)
        if outcome.reason:
            values["reason"] = outcome.reason
        event = "callback.dead" if outcome.kind is OutcomeKind.DEAD else "callback.failed"
        log.warning(event, extra=fields(**values))
