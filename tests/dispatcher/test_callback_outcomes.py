"""The callback recorder: the outcome-writing half of sending callbacks."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from dispatcher.callback_outcomes import CallbackRecorder
from dispatcher.metrics import Metrics
from dispatcher.store.base import CallbackOutcome, DeliveryQuery, DeliveryStatus, OutcomeKind
from dispatcher.store.memory import MemoryStore
from tests.dispatcher.test_store_contract import LEASE, T0, a_callback, an_attempt, enqueue_one, outcome


def _callbacks(store: MemoryStore, *labels: str) -> None:
    """One failed delivery per label, each with a callback attached."""
    for n, label in enumerate(labels, 1):
        enqueue_one(store, n)
        (lease,) = store.lease(T0, 1, LEASE)
        failed = outcome(lease, OutcomeKind.RETRY, attempt=an_attempt(500), next_attempt_at=T0 + 5)
        assert store.record([replace(failed, callback=a_callback(label))], T0) == 1


def test_a_batch_is_recorded_counted_and_a_failure_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A delivered callback is recorded and counted "ok"; a failed one is recorded with its retry, counted
    "failed" and logged as a warning naming the callback, its webhook and the status."""
    store, metrics = MemoryStore(), Metrics()
    _callbacks(store, "failed", "dead")
    first, second = store.lease_callbacks(T0, 10, LEASE)
    outcomes = [
        CallbackOutcome(first.callback_id, first.lease_id, OutcomeKind.DELIVERED, attempt=an_attempt(204)),
        CallbackOutcome(
            second.callback_id,
            second.lease_id,
            OutcomeKind.RETRY,
            attempt=an_attempt(503),
            next_attempt_at=T0 + 5,
        ),
    ]
    with caplog.at_level(logging.WARNING):
        CallbackRecorder(store, metrics).write([first, second], outcomes, T0)
    statuses = {c.id: c.status for c in store.list_callbacks(DeliveryQuery())}
    assert statuses == {
        first.callback_id: DeliveryStatus.DELIVERED,
        second.callback_id: DeliveryStatus.FAILED,
    }
    assert metrics.callbacks.labels("ok")._value.get() == 1
    assert metrics.callbacks.labels("failed")._value.get() == 1
    [warning] = [r for r in caplog.records if r.getMessage() == "callback.failed"]
    assert f"{second.callback_id}" in str(warning.__dict__) and "503" in str(warning.__dict__)


def test_a_stale_lease_is_not_recorded_twice() -> None:
    """An outcome for a lease that was reclaimed is skipped by the store; the recorder does not retry it."""
    store, metrics = MemoryStore(), Metrics()
    _callbacks(store, "failed")
    (lease,) = store.lease_callbacks(T0, 10, LEASE)
    assert store.reclaim_expired(T0 + LEASE) == 1
    late = CallbackOutcome(lease.callback_id, lease.lease_id, OutcomeKind.DELIVERED, attempt=an_attempt(204))
    CallbackRecorder(store, metrics).write([lease], [late], T0 + LEASE)
    (listed,) = store.list_callbacks(DeliveryQuery())
    assert listed.status is not DeliveryStatus.DELIVERED
