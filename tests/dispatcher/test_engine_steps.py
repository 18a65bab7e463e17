"""Each step of the delivery path on its own, with ``now`` as an argument: no threads, no sleeps."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from dispatcher.attempt import endpoint_key
from dispatcher.config import Snapshot
from dispatcher.intake import UNLEASED, Admission, Intake
from dispatcher.metrics import Metrics
from dispatcher.outcomes import Done, OutcomeWriter
from dispatcher.queues import EndpointQueues
from dispatcher.scheduler import Scheduler
from dispatcher.settings import EngineSettings
from dispatcher.store.base import DeliveryQuery, DeliveryStatus, Lease, NewEvent, Outcome, OutcomeKind
from dispatcher.store.memory import MemoryStore
from dispatcher.worker import Worker
from reconciler.model import Callback, RetryConfig, Webhook
from reconciler.routing import build_routing_table
from tests.dispatcher.test_engine import FakeClient

T0 = 10_000.0
RETRY = RetryConfig(choice="fixed", kwargs={"seconds": 30}, max_attempts=3)
A = Webhook(name="a", target_url="https://a.example.com/h", event_types=("*",), retry=RETRY)
B = Webhook(name="b", target_url="https://b.example.com/h", event_types=("*",))
OFF = Webhook(name="off", target_url="https://off.example.com/h", event_types=("*",), active=False)


def _snapshot(*hooks: Webhook) -> Snapshot:
    return Snapshot(build_routing_table(hooks, "rev-1"), {}, "rev-1")


@pytest.fixture
def store() -> Iterator[MemoryStore]:
    s = MemoryStore()
    yield s
    s.close()


def _leased(store: MemoryStore, *webhooks: str, n: int = 1, now: float = T0) -> list[Lease]:
    """``n`` new events (uuids not used before in this store) routed to ``webhooks``, enqueued leased."""
    first = len(store.list_deliveries(DeliveryQuery(limit=10_000)))
    events = [NewEvent(f"{first + i:032x}", "package.created", b"{}", webhooks) for i in range(n)]
    results = store.enqueue(events, now, 60)
    return [lease for r in results for lease in r.leases]


def _intake(
    snapshot: Snapshot, released: list[Done], **settings: Any
) -> tuple[Intake, EndpointQueues, EngineSettings]:
    s = EngineSettings(per_endpoint=2, **settings)
    queues = EndpointQueues(s.per_endpoint)
    return Intake(queues, lambda: snapshot, s, released.append, lambda: T0), queues, s


def test_plan_leases_new_deliveries_except_to_a_full_endpoint(store: MemoryStore) -> None:
    """The intake leases a commit's deliveries when they fit, leaving out the webhooks whose endpoint queue
    is full, and leases none when the commit does not fit in memory at all."""
    released: list[Done] = []
    intake, _queues, s = _intake(_snapshot(A, B), released, per_endpoint_queued=2, max_queued=4)
    assert intake.plan(["a", "b"]) == Admission(s.lease_seconds)
    assert intake.admit(_leased(store, "a", n=2)) == 2
    assert intake.plan(["a", "b"]) == Admission(s.lease_seconds, frozenset({"a"}))
    assert intake.plan(["b", "b", "b"]) == UNLEASED  # 2 queued of 4: three more do not fit
    assert intake.plan([]) == UNLEASED
    assert released == []


def test_admit_gives_back_what_does_not_fit_due_now(store: MemoryStore) -> None:
    """Leases beyond an endpoint's queue, or offered once the queues are closed, go back to the store as
    releases due now (through the outcome writer), never dropped."""
    released: list[Done] = []
    intake, queues, _s = _intake(_snapshot(A), released, per_endpoint_queued=1)
    first, second = _leased(store, "a", n=2)
    assert intake.admit([first, second]) == 1
    queues.close()
    [third] = _leased(store, "a", now=T0 + 1)
    assert intake.admit([third]) == 0
    assert [(d.outcome.delivery_id, d.outcome.kind, d.outcome.next_attempt_at) for d in released] == [
        (second.delivery_id, OutcomeKind.RELEASE, T0),
        (third.delivery_id, OutcomeKind.RELEASE, T0),
    ]


def test_scheduler_step_leases_what_is_due_and_says_when_to_look_again(store: MemoryStore) -> None:
    """One step reclaims expired leases, leases the due deliveries into the queues, and answers the next
    due time; before that time a step leases nothing."""
    released: list[Done] = []
    intake, queues, s = _intake(_snapshot(A), released)
    scheduler = Scheduler(store, intake, s, lambda: T0)
    store.enqueue([NewEvent("01" * 16, "t", b"{}", ("a",))], T0)
    store.enqueue([NewEvent("02" * 16, "t", b"{}", ("a",))], T0 + 30)
    assert scheduler.run_once(T0) == T0 + 30
    assert queues.queued(endpoint_key(A.target_url)) == 1
    assert scheduler.run_once(T0 + 10) == T0 + 30
    assert queues.size == 1
    assert scheduler.run_once(T0 + 30) is None
    assert queues.size == 2 and released == []


def test_scheduler_step_reclaims_expired_leases_on_its_interval(store: MemoryStore) -> None:
    """A lease that expired without an outcome (a crash) is due again at the next reclaim step."""
    intake, queues, s = _intake(_snapshot(A), [], reclaim_interval_seconds=15)
    scheduler = Scheduler(store, intake, s, lambda: T0)
    _leased(store, "a")  # leased until T0 + 60, never recorded
    scheduler.run_once(T0)
    assert queues.size == 0
    scheduler.run_once(T0 + 61)  # the next reclaim is due: expired, due, leased again
    assert queues.size == 1


def _worker(snapshot: Snapshot, client: FakeClient, put: list[Done], now: float = T0) -> Worker:
    return Worker(client, lambda: snapshot, put.append, Metrics(), random.Random(1), lambda: now)


def test_worker_step_attempts_and_decides(store: MemoryStore) -> None:
    """A lease is attempted once and its outcome put: a 500 is a retry on the webhook's schedule and marks
    the endpoint unhealthy; a 200 is delivered and healthy."""
    client, done = FakeClient(), list[Done]()
    client.scripts[A.target_url] = [500, 200]
    worker = _worker(_snapshot(A), client, done)
    first, second = _leased(store, "a", n=2)
    assert worker.handle(first, T0) is False
    assert worker.handle(second, T0) is True
    assert [d.outcome.kind for d in done] == [OutcomeKind.RETRY, OutcomeKind.DELIVERED]
    assert done[0].outcome.next_attempt_at == T0 + 30
    assert len(client.sent) == 2


def test_worker_step_holds_buries_and_skips_without_sending(store: MemoryStore) -> None:
    """An inactive webhook's lease is held, a removed webhook's is dead, an expired lease is left to the
    reclaim: nothing is sent for any of them."""
    client, done = FakeClient(), list[Done]()
    worker = _worker(_snapshot(OFF), client, done)
    off, gone = _leased(store, "off", "gone")
    assert worker.handle(off, T0) and worker.handle(gone, T0)
    assert worker.handle(off, off.expires_at)  # expired: no outcome
    assert [(d.outcome.kind, d.outcome.reason) for d in done] == [
        (OutcomeKind.HOLD, None),
        (OutcomeKind.DEAD, "webhook removed"),
    ]
    assert client.sent == []


def _writer(
    store: MemoryStore, snapshot: Snapshot, due: list[float], callbacks: list[float]
) -> OutcomeWriter:
    return OutcomeWriter(
        store,
        lambda: snapshot,
        Metrics(),
        on_due=due.extend,
        on_callbacks=callbacks.append,
        stopping=threading.Event(),
        clock=lambda: T0,
    )


def test_writer_step_records_a_batch_and_announces_due_work(store: MemoryStore) -> None:
    """One batch is recorded in the store; the retry and release times are announced to the scheduler and
    a stored callback to the callback sender."""
    hook = Webhook(
        name="a",
        target_url=A.target_url,
        event_types=("*",),
        retry=RETRY,
        callback=Callback(url="https://oms.example.com/o", on=frozenset({"failed"})),
    )
    client, done, due, callbacks = FakeClient(), list[Done](), list[float](), list[float]()
    client.scripts[hook.target_url] = [500]
    retry, release = _leased(store, "a", n=2)
    _worker(_snapshot(hook), client, done).handle(retry, T0)
    done.append(Done(Outcome(release.delivery_id, release.lease_id, OutcomeKind.RELEASE, next_attempt_at=T0)))
    writer = _writer(store, _snapshot(hook), due, callbacks)
    for d in done:
        writer.put(d)
    batch, closed = writer.take(block=False)
    assert len(batch) == 2 and not closed
    writer.write_once(batch, T0)
    assert sorted(due) == [T0, T0 + 30] and callbacks == [T0]
    assert writer.unwritten == 0
    statuses = sorted(d.status for d in store.list_deliveries(DeliveryQuery()))
    assert statuses == [DeliveryStatus.FAILED, DeliveryStatus.PENDING]
    assert [c.label for c in store.list_callbacks(DeliveryQuery())] == ["failed"]


def test_writer_step_turns_a_stale_hold_into_a_release(store: MemoryStore) -> None:
    """A hold decided just before its webhook was re-activated is recorded as a release due now."""
    [lease] = _leased(store, "a")
    due: list[float] = []
    writer = _writer(store, _snapshot(A), due, [])  # "a" is active in the snapshot the writer sees
    hold = Outcome(lease.delivery_id, lease.lease_id, OutcomeKind.HOLD)
    writer.write_once([Done(hold, A, lease)], T0)
    assert due == [T0]
    assert [lease.delivery_id for lease in store.lease(T0, 10, 60)] == [lease.delivery_id]


def test_writer_take_reports_close_after_the_outcomes_before_it(store: MemoryStore) -> None:
    """take() returns the outcomes put before close() together with the fact that it was closed."""
    [lease] = _leased(store, "a")
    writer = _writer(store, _snapshot(A), [], [])
    writer.put(Done(Outcome(lease.delivery_id, lease.lease_id, OutcomeKind.RELEASE, next_attempt_at=T0)))
    writer.close()
    batch, closed = writer.take()
    assert len(batch) == 1 and closed


def test_admit_follows_a_changed_target_url_in_a_new_snapshot(store: MemoryStore) -> None:
    """Endpoint keys are worked out once per snapshot: after a reload moves a webhook to another host, its
    new leases queue under the new endpoint."""
    moved = Webhook(name="a", target_url="https://moved.example.com/h", event_types=("*",))
    snapshots = [_snapshot(A)]
    s = EngineSettings()
    queues = EndpointQueues(s.per_endpoint)
    intake = Intake(queues, lambda: snapshots[0], s, list[Done]().append, lambda: T0)
    first, second = _leased(store, "a", n=2)
    intake.admit([first])
    snapshots[0] = _snapshot(moved)
    intake.admit([second])
    assert queues.queued_by_endpoint() == {endpoint_key(A.target_url): 1, endpoint_key(moved.target_url): 1}
