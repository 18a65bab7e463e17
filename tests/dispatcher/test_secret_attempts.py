"""A refused or unresolvable secret is a recorded, retried, finally dead attempt (issue #9, class 5)."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dispatcher.config import Snapshot
from dispatcher.engine import Engine, EngineSettings
from dispatcher.metrics import Metrics
from dispatcher.store.base import DeliveryQuery, DeliveryStatus, NewEvent
from dispatcher.store.memory import MemoryStore
from reconciler.model import BasicAuth, Callback, RetryConfig, SecretRef, TokenAuth, Webhook
from reconciler.routing import build_routing_table
from tests.dispatcher.test_engine import FakeClient, _callbacks_sent

REASON = "secret {env: AWS_SECRET_ACCESS_KEY}: refused: the name matches no --secret-env pattern (WEBHOOK_*)"
REF = SecretRef("env", "AWS_SECRET_ACCESS_KEY")
RETRY = RetryConfig(choice="fixed", kwargs={"seconds": 1}, max_attempts=2)
CALLBACK = Callback(url="https://oms.example.com/outcomes", on=frozenset({"dead"}))


@pytest.fixture
def store() -> Iterator[MemoryStore]:
    s = MemoryStore()
    yield s
    s.close()


def _snapshot(hook: Webhook) -> Snapshot:
    return Snapshot(build_routing_table([hook], "rev-1"), {}, "rev-1", secret_errors={REF: REASON})


def _run_to_dead(store: MemoryStore, hook: Webhook) -> tuple[FakeClient, Metrics]:
    client, metrics = FakeClient(), Metrics()
    snapshot = _snapshot(hook)
    engine = Engine(
        store,
        client,
        lambda: snapshot,
        settings=EngineSettings(workers=2, per_endpoint=2),
        metrics=metrics,
        rng=random.Random(1),
    )
    engine.start()
    try:
        [result] = store.enqueue([NewEvent("ab" * 16, "package.created", b"{}", ["a"])], time.time(), 60)
        engine.submit(result.leases)
        _wait(lambda: _status(store) is DeliveryStatus.FAILED)
        [row] = store.list_deliveries(DeliveryQuery())
        assert row.next_attempt_at is not None
        engine.run_once(row.next_attempt_at + 0.01)  # the retry, on its schedule
        _wait(
            lambda: _status(store) is DeliveryStatus.DEAD and len(_callbacks_sent(client, CALLBACK.url)) == 1
        )
    finally:
        engine.stop(1)
    return client, metrics


def _wait(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.01)


def _status(store: MemoryStore) -> DeliveryStatus | None:
    rows = store.list_deliveries(DeliveryQuery())
    return rows[0].status if rows else None


@pytest.mark.parametrize(
    "hook",
    [
        Webhook("a", "https://a.example.com/h", ("*",), secret_key=REF, retry=RETRY, callback=CALLBACK),
        Webhook(
            "a",
            "https://a.example.com/h",
            ("*",),
            additional_headers={"X-Env": REF},
            retry=RETRY,
            callback=CALLBACK,
        ),
        Webhook(
            "a", "https://a.example.com/h", ("*",), auth=BasicAuth("u", REF), retry=RETRY, callback=CALLBACK
        ),
        Webhook(
            "a",
            "https://a.example.com/h",
            ("*",),
            auth=TokenAuth("https://a.example.com/token", "u", REF),
            retry=RETRY,
            callback=CALLBACK,
        ),
    ],
    ids=["secret_key", "header", "basic-password", "token-password"],
)
def test_an_unresolved_secret_is_a_recorded_attempt_retried_then_dead(
    store: MemoryStore, hook: Webhook
) -> None:
    """Every attempt is recorded with the reason and no status code, retried on schedule, dead at the end,
    with callbacks and the secret-error counter; nothing is sent."""
    client, metrics = _run_to_dead(store, hook)
    [row] = store.list_deliveries(DeliveryQuery())
    detail = store.get_delivery(row.id)
    assert detail is not None
    assert [(a.status_code, a.error) for a in detail.attempts] == [(None, REASON), (None, REASON)]
    assert row.dead_reason == "max attempts reached (2)"
    assert [r.url for r in client.sent] == [CALLBACK.url]  # the callback only: nothing went to the webhook
    [payload] = _callbacks_sent(client, CALLBACK.url)
    assert payload["outcome"] == "dead" and payload["error"] == REASON
    assert metrics.registry.get_sample_value("dispatch_secret_errors_total") == 2
    assert metrics.registry.get_sample_value("dispatch_deliveries_total", {"outcome": "dead"}) == 1
