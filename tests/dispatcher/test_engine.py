"""The delivery engine, driven with a fake transport and the in-memory store (no threads where avoidable)."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dispatcher.attempt import endpoint_key
from dispatcher.config import Snapshot
from dispatcher.engine import Engine, EngineSettings
from dispatcher.outbound import OutboundRequest
from dispatcher.queues import EndpointQueues
from dispatcher.store.base import (
    AttemptRecord,
    DeliveryQuery,
    DeliveryStatus,
    Lease,
    NewCallback,
    NewEvent,
    Outcome,
    OutcomeKind,
)
from dispatcher.store.memory import MemoryStore
from reconciler.model import Callback, RetryConfig, TokenAuth, Webhook
from reconciler.routing import build_routing_table


class FakeClient:
    """Answers from a per-URL script of status codes; records every request. Optionally slow per URL."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[int]] = {}
        self.slow: dict[str, threading.Event] = {}
        self.sent: list[OutboundRequest] = []
        self.callbacks: list[tuple[str, dict[str, Any]]] = []
        self.started = 0
        self.lock = threading.Lock()

    def send(self, request: OutboundRequest) -> AttemptRecord:
        gate = self.slow.get(request.url)
        with self.lock:
            self.started += 1
        if gate is not None:
            gate.wait(10)
        with self.lock:
            self.sent.append(request)
            codes = self.scripts.get(request.url, [200])
            code = codes.pop(0) if len(codes) > 1 else codes[0]
        return AttemptRecord(started_at=time.time(), duration_seconds=0.001, status_code=code)

    def fetch_token(self, auth: TokenAuth, password: str, timeout_seconds: float) -> str:
        return "tok-123"

    def post_json(self, url: str, payload: dict[str, Any], timeout_seconds: float) -> AttemptRecord:
        with self.lock:
            self.callbacks.append((url, payload))
        return AttemptRecord(started_at=time.time(), duration_seconds=0.001, status_code=204)


def _lease(i: int, webhook: str = "a") -> Lease:
    return Lease(i, i, time.time() + 60, f"{i:032x}", "t", webhook, b"{}", 0, time.time())


def _snapshot(*hooks: Webhook) -> Snapshot:
    return Snapshot(build_routing_table(hooks, "rev-1"), {}, "rev-1")


@pytest.fixture
def client() -> FakeClient:
    return FakeClient()


@pytest.fixture
def store() -> Iterator[MemoryStore]:
    s = MemoryStore()
    yield s
    s.close()


def _engine(
    store: MemoryStore,
    client: FakeClient,
    snapshot: list[Snapshot],
    clock: Callable[[], float] = time.time,
    **settings: Any,
) -> Engine:
    return Engine(
        store,
        client,
        lambda: snapshot[0],
        settings=EngineSettings(workers=4, per_endpoint=2, **settings),
        rng=random.Random(7),
        clock=clock,
    )


def _enqueue(
    store: MemoryStore, engine: Engine, *webhooks: str, uuid: str = "ab" * 16, now: float | None = None
) -> None:
    at = time.time() if now is None else now
    [result] = store.enqueue([NewEvent(uuid, "package.created", b'{"x":1}', webhooks)], at, 60)
    engine.intake.admit(result.leases)


def _work(engine: Engine, now: float) -> None:
    """On this thread, as the engine's threads would: attempt every queued lease, then write the outcomes."""
    while (item := engine.queues.take(0)) is not None:
        key, lease = item
        engine.queues.done(key, engine.worker.handle(lease, now))
    batch, _ = engine.writer.take(block=False)
    engine.writer.write_once(batch, now)


def _wait(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.01)


def _statuses(store: MemoryStore) -> dict[str, DeliveryStatus]:
    return {d.webhook: d.status for d in store.list_deliveries(DeliveryQuery())}


def test_endpoint_queues_never_exceed_the_per_endpoint_limit() -> None:
    """A worker is never handed a lease of an endpoint already at its in-flight limit."""
    queues = EndpointQueues(per_endpoint=2)
    _prove(queues, "slow")
    for i in range(5):
        queues.put("slow", _lease(i))
    queues.put("fast", _lease(99))
    taken = [queues.take(0.01) for _ in range(3)]
    keys = [t[0] for t in taken if t is not None]
    assert sorted(keys) == ["fast", "slow", "slow"]
    assert queues.take(0.01) is None  # slow is at its limit, fast is empty
    queues.done("slow")
    again = queues.take(0.01)
    assert again is not None and again[0] == "slow"


def test_endpoint_key_groups_by_scheme_host_and_port() -> None:
    """Endpoints are scheme, host and port: paths and default ports do not split them."""
    assert endpoint_key("https://ERP.example.com/a") == endpoint_key("https://erp.example.com:443/b")
    assert endpoint_key("http://erp.example.com/a") != endpoint_key("https://erp.example.com/a")


def test_new_delivery_is_attempted_without_waiting_for_the_scheduler(
    store: MemoryStore, client: FakeClient
) -> None:
    """A submitted lease is delivered at once and recorded delivered, with the signed headers."""
    hook = Webhook(name="a", target_url="https://a.example.com/h", event_types=("package.created",))
    engine = _engine(store, client, [_snapshot(hook)])
    engine.start()
    try:
        _enqueue(store, engine, "a")
        _wait(lambda: _statuses(store).get("a") is DeliveryStatus.DELIVERED)
    finally:
        engine.stop(1)
    [request] = client.sent
    assert request.headers["X-Whisperer-Event"] == "package.created"
    assert request.headers["webhook-id"] == "ab" * 16
    assert request.body == b'{"x":1}'


def test_slow_endpoint_does_not_hold_up_another(store: MemoryStore, client: FakeClient) -> None:
    """While every slot of one endpoint hangs, deliveries to another endpoint still complete."""
    slow = Webhook(name="slow", target_url="https://slow.example.com/h", event_types=("*",))
    fast = Webhook(name="fast", target_url="https://fast.example.com/h", event_types=("*",))
    gate = threading.Event()
    client.slow["https://slow.example.com/h"] = gate
    engine = _engine(store, client, [_snapshot(slow, fast)])
    engine.start()
    try:
        for i in range(6):
            _enqueue(store, engine, "slow", uuid=f"{i:032x}")
        for i in range(6, 12):
            _enqueue(store, engine, "fast", uuid=f"{i:032x}")
        _wait(lambda: sum(1 for r in client.sent if "fast" in r.url) == 6)
        assert not any("slow" in r.url for r in client.sent)
    finally:
        gate.set()
        engine.stop(2)


def test_failed_attempt_is_rescheduled_and_retried_by_the_scheduler(
    store: MemoryStore, client: FakeClient
) -> None:
    """A 500 reschedules the delivery per its policy; a scheduler step at the due time attempts it again."""
    retry = RetryConfig(choice="fixed", kwargs={"seconds": 30}, max_attempts=3)
    hook = Webhook(name="a", target_url="https://a.example.com/h", event_types=("*",), retry=retry)
    client.scripts[hook.target_url] = [500, 200]
    now = [10_000.0]
    engine = _engine(store, client, [_snapshot(hook)], clock=lambda: now[0])
    _enqueue(store, engine, "a", now=now[0])
    _work(engine, now[0])
    [row] = store.list_deliveries(DeliveryQuery())
    assert row.status is DeliveryStatus.FAILED and row.next_attempt_at == now[0] + 30
    assert engine.scheduler.run_once(now[0]) == row.next_attempt_at  # not due yet: sleeps until then
    assert engine.queues.size == 0
    now[0] = row.next_attempt_at + 0.01
    engine.scheduler.run_once(now[0])
    assert engine.queues.size == 1
    _work(engine, now[0])
    assert _statuses(store)["a"] is DeliveryStatus.DELIVERED
    assert len(client.sent) == 2


def test_inactive_webhook_holds_and_removed_webhook_buries(store: MemoryStore, client: FakeClient) -> None:
    """An inactive webhook's delivery is held without an attempt; one of a removed webhook becomes dead."""
    inactive = Webhook(name="off", target_url="https://off.example.com/h", event_types=("*",), active=False)
    now = 10_000.0
    engine = _engine(store, client, [_snapshot(inactive)], clock=lambda: now)
    _enqueue(store, engine, "off", "gone", now=now)
    _work(engine, now)
    rows = {d.webhook: d for d in store.list_deliveries(DeliveryQuery())}
    assert rows["gone"].status is DeliveryStatus.DEAD and rows["gone"].dead_reason == "webhook removed"
    assert rows["off"].status is DeliveryStatus.PENDING and rows["off"].attempts == 0
    assert engine.is_idle() and engine.scheduler.run_once(now + 1) is None  # held: nothing due
    assert client.sent == []
    assert store.release_held("off", now) == 1


def _callbacks_sent(client: FakeClient, url: str) -> list[dict[str, Any]]:
    with client.lock:
        return [json.loads(r.body) for r in client.sent if r.url == url]


CALLBACK_URL = "https://oms.example.com/outcomes"


def _run_until_one_callback(store: MemoryStore, client: FakeClient, on: str, status_code: int) -> Engine:
    """Deliver one event to webhook "a" (answering ``status_code``, callback.on ``[on]``) until one callback
    POST has been sent; the engine is stopped on return."""
    hook = Webhook(
        name="a",
        target_url="https://a.example.com/h",
        event_types=("*",),
        callback=Callback(url=CALLBACK_URL, on=frozenset({on})),
    )
    client.scripts[hook.target_url] = [status_code]
    engine = _engine(store, client, [_snapshot(hook)])
    engine.start()
    try:
        _enqueue(store, engine, "a")
        _wait(lambda: len(_callbacks_sent(client, CALLBACK_URL)) == 1)
    finally:
        engine.stop(1)
    return engine


def test_callback_receives_the_configured_outcomes_only(store: MemoryStore, client: FakeClient) -> None:
    """A callback with on: [dead] is POSTed for a 410 and carries the outcome record, not the body."""
    _run_until_one_callback(store, client, "dead", 410)
    (payload,) = _callbacks_sent(client, CALLBACK_URL)
    assert payload["outcome"] == "dead" and payload["reason"] == "410 Gone"
    assert payload["event"] == {"type": "package.created", "uuid": "ab" * 16}
    assert "body" not in payload
    _wait(lambda: [c.status for c in store.list_callbacks(DeliveryQuery())] == [DeliveryStatus.DELIVERED])


def test_a_failed_attempt_with_a_retry_produces_a_failed_callback(
    store: MemoryStore, client: FakeClient
) -> None:
    """on: [failed] fires when an attempt fails and a retry is scheduled, with outcome "failed" and the
    retry time; the deliveries metric keeps the label "retry"."""
    engine = _run_until_one_callback(store, client, "failed", 503)
    (payload,) = _callbacks_sent(client, CALLBACK_URL)
    assert payload["outcome"] == "failed" and payload["status_code"] == 503 and payload["attempts"] == 1
    assert payload["next_attempt_at"] is not None and len(payload["callback_id"]) == 32
    (stored,) = store.list_callbacks(DeliveryQuery())
    assert stored.label == "failed"
    assert engine.metrics.deliveries.labels("retry")._value.get() == 1


def _stored_callback(store: MemoryStore, now: float, label: str = "dead") -> None:
    """Record a dead delivery whose outcome carries a callback (as the outcome writer does)."""
    [result] = store.enqueue([NewEvent("cd" * 16, "package.created", b"{}", ("a",))], now, 60)
    [lease] = result.leases
    payload = json.dumps({"callback_id": "ef" * 16, "outcome": label}).encode()
    callback = NewCallback("a", CALLBACK_URL, label, payload)
    outcome = Outcome(lease.delivery_id, lease.lease_id, OutcomeKind.DEAD, reason="x", callback=callback)
    assert store.record([outcome], now) == 1


def test_a_callback_is_retried_on_the_default_schedule_until_delivered(
    store: MemoryStore, client: FakeClient
) -> None:
    """A callback whose endpoint fails is retried 5 s (+-20 %) later with the same bytes and webhook-id."""
    hook = Webhook(
        name="a",
        target_url="https://a.example.com/h",
        event_types=("*",),
        callback=Callback(url=CALLBACK_URL, on=frozenset({"dead"})),
        timeout_seconds=3,
    )
    client.scripts[CALLBACK_URL] = [503, 204]
    now = 10_000.0
    engine = Engine(store, client, lambda: _snapshot(hook), rng=random.Random(1), clock=lambda: now)
    _stored_callback(store, now)
    next_at = engine.callback_sender.run_once(now)
    assert next_at is not None and now + 4 <= next_at <= now + 6
    assert engine.callback_sender.run_once(now + 1) == next_at  # not due yet: nothing sent
    now = next_at
    assert engine.callback_sender.run_once(now) is None
    first, second = client.sent
    assert (
        first.body == second.body and first.headers["webhook-id"] == second.headers["webhook-id"] == "ef" * 16
    )
    assert first.timeout_seconds == 3
    (stored,) = store.list_callbacks(DeliveryQuery())
    assert (stored.status, stored.attempts) == (DeliveryStatus.DELIVERED, 2)


def test_a_callback_answered_410_is_dead_and_can_be_requeued(store: MemoryStore, client: FakeClient) -> None:
    """410 Gone makes a callback dead at once; it stays listed and is sent again after a requeue."""
    hook = Webhook(name="a", target_url="https://a.example.com/h", event_types=("*",))
    client.scripts[CALLBACK_URL] = [410, 204]
    engine = Engine(store, client, lambda: _snapshot(hook), rng=random.Random(1), clock=lambda: 10_000.0)
    _stored_callback(store, 10_000.0)
    assert engine.callback_sender.run_once(10_000.0) is None
    (dead,) = store.list_callbacks(DeliveryQuery(status=DeliveryStatus.DEAD))
    assert dead.dead_reason == "410 Gone"
    assert store.requeue_callbacks([dead.id], 10_000.0) == 1
    engine.callback_sender.run_once(10_000.0)
    assert [r.url for r in client.sent] == [CALLBACK_URL, CALLBACK_URL]
    assert store.list_callbacks(DeliveryQuery())[0].status is DeliveryStatus.DELIVERED


def test_a_callback_gives_up_after_the_default_schedule(store: MemoryStore, client: FakeClient) -> None:
    """A callback that never gets a 2xx is attempted 8 times (the default schedule) and then dead."""
    client.scripts[CALLBACK_URL] = [500]
    now = [10_000.0]
    engine = Engine(store, client, lambda: _snapshot(), rng=random.Random(1), clock=lambda: now[0])
    _stored_callback(store, now[0])
    for _ in range(20):
        next_at = engine.callback_sender.run_once(now[0])
        if next_at is None:
            break
        now[0] = next_at
    (dead,) = store.list_callbacks(DeliveryQuery())
    assert (dead.status, dead.attempts, dead.dead_reason) == (
        DeliveryStatus.DEAD,
        8,
        "max attempts reached (8)",
    )
    assert len(client.sent) == 8


def test_stop_releases_queued_leases_for_the_next_run(store: MemoryStore, client: FakeClient) -> None:
    """Leases still queued at shutdown are released, so they are due again at once for the next process."""
    hook = Webhook(name="a", target_url="https://a.example.com/h", event_types=("*",))
    gate = threading.Event()
    client.slow[hook.target_url] = gate
    engine = _engine(store, client, [_snapshot(hook)])
    _prove(engine.queues, endpoint_key(hook.target_url))  # it has answered before: both slots are open
    engine.start()
    for i in range(5):
        _enqueue(store, engine, "a", uuid=f"{i:032x}")
    _wait(lambda: client.started == 2)  # both slots of the endpoint are in flight
    threading.Timer(0.3, gate.set).start()
    engine.stop(5)
    assert len(store.lease(time.time(), 10, 60)) == 3  # 2 were in flight and finished; 3 were released


def _prove(queues: EndpointQueues, key: str) -> None:
    """One attempt to ``key`` that answered healthy: the endpoint has its full limit from now on."""
    queues.put(key, _lease(10_000))
    taken = queues.take(0.01)
    assert taken is not None and taken[0] == key
    queues.done(key, healthy=True)


def test_an_endpoint_gets_one_slot_until_its_first_healthy_answer() -> None:
    """A new endpoint has one attempt in flight until one answers healthy, then its full limit: receivers
    that stall from the first byte hold one worker each, not per_endpoint of them."""
    queues = EndpointQueues(per_endpoint=3)
    for i in range(6):
        queues.put("new", _lease(i))
    assert queues.take(0.01) is not None
    assert queues.take(0.01) is None  # unproven: one in flight
    queues.done("new", healthy=True)
    assert [queues.take(0.01) is not None for _ in range(4)] == [True, True, True, False]


def test_failing_endpoint_is_limited_to_one_slot_until_it_answers() -> None:
    """After a failed attempt an endpoint gets one slot at a time; a success restores its full limit."""
    queues = EndpointQueues(per_endpoint=3)
    _prove(queues, "dead")
    for i in range(6):
        queues.put("dead", _lease(i))
    first = queues.take(0.01)
    assert first is not None
    queues.done("dead", healthy=False)
    assert queues.take(0.01) is not None
    assert queues.take(0.01) is None  # one in flight: the failing endpoint's limit
    queues.done("dead", healthy=True)
    assert queues.take(0.01) is not None and queues.take(0.01) is not None


def test_closed_queues_refuse_new_leases_and_hand_out_nothing() -> None:
    """Once closed, put() refuses (the caller releases the lease) and take() returns None at once."""
    queues = EndpointQueues(per_endpoint=2)
    queues.put("a", _lease(1))
    assert [lease.delivery_id for lease in queues.close()] == [1]
    assert queues.put("a", _lease(2)) is False
    assert queues.take(5) is None


def test_scheduler_leases_past_the_backlog_of_a_full_endpoint(store: MemoryStore, client: FakeClient) -> None:
    """An endpoint with enough queued is passed over: another endpoint's later due work is leased at once,
    the backlog stays due in the store (not leased and released), and with nothing else due the scheduler
    waits for a drain or a wake instead of scanning the store again."""
    dead = Webhook(name="dead", target_url="https://dead.example.com/h", event_types=("*",))
    live = Webhook(name="live", target_url="https://live.example.com/h", event_types=("*",))
    engine = _engine(store, client, [_snapshot(dead, live)], per_endpoint_queued=4, lease_batch=3)
    now = time.time()
    for i in range(10):  # the dead endpoint's backlog comes first in due order
        store.enqueue([NewEvent(f"{i:032x}", "t", b"{}", ("dead",))], now - 100 + i)
    for i in range(10, 13):
        store.enqueue([NewEvent(f"{i:032x}", "t", b"{}", ("live",))], now - 50 + i)
    leases: list[int] = []
    real_lease = store.lease

    def counting_lease(*args: Any, **kwargs: Any) -> list[Lease]:
        got = real_lease(*args, **kwargs)
        leases.append(len(got))
        return got

    store.lease = counting_lease  # type: ignore[method-assign]
    scheduler = engine.scheduler
    assert scheduler.run_once(now) == now  # a full batch of the dead endpoint's: 3 queued, more may be due
    scheduler.run_once(now)  # the dead endpoint is now past half full: passed over, the live one leased
    dead_key, live_key = endpoint_key(dead.target_url), endpoint_key(live.target_url)
    assert engine.queues.queued(dead_key) == 3
    assert engine.queues.queued(live_key) == 3
    due = [d for d in store.list_deliveries(DeliveryQuery()) if d.webhook == "dead"]
    assert sum(1 for d in due if d.next_attempt_at is not None and d.next_attempt_at <= now) == 10
    assert leases == [3, 3]
    scheduler.run_once(now)  # nothing but the backlog is due: one fruitless lease, then a hold
    scheduler.run_once(now + 0.1)
    scheduler.run_once(now + 0.2)
    assert leases == [3, 3, 0]
    scheduler.wake()  # new due work may exist: look again
    scheduler.run_once(now + 0.3)
    assert leases == [3, 3, 0, 0]
    scheduler.wake(now + 10)  # work announced for later (a retry) does not end the hold before it is due
    scheduler.run_once(now + 0.5)
    assert leases == [3, 3, 0, 0]
    scheduler.wake_all([now + 1.0, now + 1.5])  # each announced time ends a hold when it comes
    scheduler.run_once(now + 1.2)
    scheduler.run_once(now + 1.7)
    assert leases == [3, 3, 0, 0, 0, 0]


def test_a_hold_ends_when_an_endpoint_that_filled_during_it_drains(
    store: MemoryStore, client: FakeClient
) -> None:
    """While the scheduler holds for a dead endpoint's backlog, a live endpoint fills and ingest leaves its
    new deliveries in the store (due now, announced to nobody): once the live one drains, its backlog is
    leased at the next step, not when the hold runs out."""
    dead = Webhook(name="dead", target_url="https://dead.example.com/h", event_types=("*",))
    live = Webhook(name="live", target_url="https://live.example.com/h", event_types=("*",))
    engine = _engine(store, client, [_snapshot(dead, live)], per_endpoint_queued=8, lease_batch=3)
    now = time.time()
    for i in range(10):
        store.enqueue([NewEvent(f"{i:032x}", "t", b"{}", ("dead",))], now - 100 + i)
    scheduler = engine.scheduler
    while not scheduler._hold:  # leases the dead endpoint's backlog until it is full, then holds
        scheduler.run_once(now)
    dead_key, live_key = endpoint_key(dead.target_url), endpoint_key(live.target_url)
    assert engine.queues.queued(dead_key) == 6
    for i in range(10, 14):  # ingest admits the live endpoint's new deliveries until it is full ...
        _enqueue(store, engine, "live", uuid=f"{i:032x}", now=now)
    for i in range(14, 17):  # ... then leaves the next ones in the store
        store.enqueue([NewEvent(f"{i:032x}", "t", b"{}", ("live",))], now)
    assert scheduler.run_once(now + 0.1) == pytest.approx(now + 0.15)  # both full: still holding
    while engine.queues.queued(live_key) > 3:  # the live endpoint's attempts take some: below half full
        got = engine.queues.take(0)
        assert got is not None
        engine.queues.done(got[0])
    assert engine.queues.queued(dead_key) >= 4  # the dead one is still full
    leased_before = engine.queues.queued(live_key)
    scheduler.run_once(now + 0.2)
    assert engine.queues.queued(live_key) == leased_before + 3  # its backlog, leased at once
