"""A refused or unresolvable secret is a recorded, retried, finally dead attempt (issue #9, class 5)."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from dispatcher.config import Snapshot
from dispatcher.engine import Engine, EngineSettings
from dispatcher.metrics import Metrics
from dispatcher.store.base import DeliveryQuery, DeliveryStatus, NewEvent
from dispatcher.store.memory import MemoryStore
from reconciler.model import BasicAuth, Callback, RetryConfig, SecretRef, TokenAuth, Webhook
from reconciler.routing import build_routing_table
from tests.dispatcher.test_engine import FakeClient, _callbacks_sent, _work

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
    """Drive the engine's steps on this thread: the first attempt, the retry on its schedule, the callback."""
    client, metrics = FakeClient(), Metrics()
    snapshot = _snapshot(hook)
    now = [10_000.0]
    engine = Engine(
        store,
        client,
        lambda: snapshot,
        settings=EngineSettings(workers=2, per_endpoint=2),
        metrics=metrics,
        rng=random.Random(1),
        clock=lambda: now[0],
    )
    [result] = store.enqueue([NewEvent("ab" * 16, "package.created", b"{}", ("a",))], now[0], 60)
    engine.intake.admit(result.leases)
    _work(engine, now[0])
    [row] = store.list_deliveries(DeliveryQuery())
    assert row.status is DeliveryStatus.FAILED and row.next_attempt_at is not None
    now[0] = row.next_attempt_at + 0.01
    engine.scheduler.run_once(now[0])  # the retry, on its schedule
    _work(engine, now[0])
    assert _status(store) is DeliveryStatus.DEAD
    assert engine.callback_sender.run_once(now[0]) is None
    return client, metrics


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
