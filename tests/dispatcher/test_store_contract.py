"""The store contract: every backend passes the same behaviour suite (``store`` runs once per backend)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from dispatcher.store.base import (
    AttemptRecord,
    CallbackOutcome,
    DeliveryQuery,
    DeliveryStatus,
    Lease,
    NewCallback,
    NewEvent,
    Outcome,
    OutcomeKind,
    Store,
)
from dispatcher.store.memory import MemoryStore
from dispatcher.store.sqlite import SQLiteStore

T0 = 1_000.0
LEASE = 30.0


@pytest.fixture(params=["sqlite", "memory", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    backend: Store
    if request.param == "postgresql":
        from dispatcher.store.postgres import PostgresStore

        backend = PostgresStore(request.getfixturevalue("pg_url"))
    else:
        backend = SQLiteStore(tmp_path / "store.db") if request.param == "sqlite" else MemoryStore()
    try:
        yield backend
    finally:
        backend.close()


def event(n: int, *webhooks: str, type: str = "package.created") -> NewEvent:
    return NewEvent(uuid=f"{n:032x}", type=type, body=b'{"n": %d}' % n, webhooks=webhooks or ("erp",))


def an_attempt(status_code: int | None = 500, *, at: float = T0, error: str | None = None) -> AttemptRecord:
    return AttemptRecord(
        started_at=at,
        duration_seconds=0.25,
        status_code=status_code,
        error=error,
        response_headers={"content-type": "text/plain"},
        response_excerpt=f"answer {status_code}",
    )


def enqueue_one(store: Store, n: int, *webhooks: str, now: float = T0) -> int:
    """Enqueue one event and return the id of its (first) delivery."""
    (result,) = store.enqueue([event(n, *webhooks)], now)
    return result.delivery_ids[0]


def lease_only(store: Store, now: float, lease_seconds: float = LEASE) -> Lease:
    (lease,) = store.lease(now, 10, lease_seconds)
    return lease


def outcome(
    lease: Lease,
    kind: OutcomeKind,
    *,
    attempt: AttemptRecord | None = None,
    next_attempt_at: float | None = None,
    reason: str | None = None,
) -> Outcome:
    return Outcome(lease.delivery_id, lease.lease_id, kind, attempt, next_attempt_at, reason)


def status_of(store: Store, delivery_id: int) -> DeliveryStatus:
    detail = store.get_delivery(delivery_id)
    assert detail is not None
    return detail.delivery.status


def test_enqueue_lease_and_ack_lifecycle(store: Store) -> None:
    """An enqueued delivery is leased once with its body, then acknowledged as delivered with one attempt."""
    (result,) = store.enqueue([event(1, "erp")], T0)
    assert not result.duplicate and len(result.delivery_ids) == 1
    lease = lease_only(store, T0)
    assert (lease.delivery_id, lease.event_uuid, lease.webhook) == (
        result.delivery_ids[0],
        f"{1:032x}",
        "erp",
    )
    assert (lease.body, lease.event_type, lease.attempts, lease.created_at) == (
        b'{"n": 1}',
        "package.created",
        0,
        T0,
    )
    assert lease.expires_at == T0 + LEASE
    assert store.lease(T0, 10, LEASE) == []
    assert store.record([outcome(lease, OutcomeKind.DELIVERED, attempt=an_attempt(204))], T0 + 1) == 1
    detail = store.get_delivery(lease.delivery_id)
    assert detail is not None
    assert detail.delivery.status is DeliveryStatus.DELIVERED
    assert detail.delivery.attempts == 1 and detail.delivery.last_status_code == 204
    assert detail.delivery.next_attempt_at is None and detail.delivery.updated_at == T0 + 1
    assert [a.number for a in detail.attempts] == [1]
    assert store.lease(T0 + 1000, 10, LEASE) == []


def test_one_delivery_per_routed_webhook(store: Store) -> None:
    """An event routed to several webhooks gets one delivery each; routed nowhere, it is still accepted."""
    first, nowhere = store.enqueue([event(1, "a", "b", "a"), NewEvent(f"{2:032x}", "x", b"{}", ())], T0)
    assert len(first.delivery_ids) == 2 and nowhere.delivery_ids == () and not nowhere.duplicate
    assert {lease.webhook for lease in store.lease(T0, 10, LEASE)} == {"a", "b"}
    assert store.enqueue([NewEvent(f"{2:032x}", "x", b"{}", ())], T0)[0].duplicate


def test_duplicate_uuid_is_accepted_once(store: Store) -> None:
    """A uuid already stored is reported as a duplicate and stores nothing."""
    store.enqueue([event(1)], T0)
    (again,) = store.enqueue([event(1, "other")], T0 + 5)
    assert again.duplicate and again.delivery_ids == ()
    assert store.counts()[DeliveryStatus.PENDING] == 1
    assert store.open_webhooks() == {"erp"}


def test_duplicate_uuid_within_one_batch(store: Store) -> None:
    """Within one batch the second copy of a uuid is the duplicate, and results keep the input order."""
    results = store.enqueue([event(1), event(2), event(1)], T0)
    assert [(r.uuid, r.duplicate) for r in results] == [
        (f"{1:032x}", False),
        (f"{2:032x}", False),
        (f"{1:032x}", True),
    ]
    assert sum(len(r.delivery_ids) for r in results) == 2


def test_enqueue_with_lease_seconds_returns_the_leases_it_created(store: Store) -> None:
    """Deliveries created leased come back in the result, are not leased again, and accept outcomes."""
    results = store.enqueue([event(1, "a", "b"), event(2)], T0, lease_seconds=LEASE)
    ids = [i for r in results for i in r.delivery_ids]
    leases = [lease for r in results for lease in r.leases]
    assert [lease.delivery_id for lease in leases] == ids
    assert [lease.webhook for lease in results[0].leases] == ["a", "b"]
    assert {lease.event_uuid for lease in results[1].leases} == {f"{2:032x}"}
    assert {lease.expires_at for lease in leases} == {T0 + LEASE}
    assert leases[0].body == b'{"n": 1}' and leases[2].webhook == "erp" and leases[2].attempts == 0
    assert store.lease(T0, 10, LEASE) == []
    assert store.next_due_at() is None
    applied = store.record(
        [outcome(lease, OutcomeKind.DELIVERED, attempt=an_attempt(200)) for lease in leases], T0
    )
    assert applied == 3


def test_enqueue_returns_no_leases_without_lease_seconds_or_for_duplicates(store: Store) -> None:
    """Without lease_seconds nothing is leased; a duplicate (stored before, or in the batch) gets no lease."""
    [plain] = store.enqueue([event(1, "a")], T0)
    assert plain.leases == () and len(plain.delivery_ids) == 1
    again, fresh, copy = store.enqueue([event(1, "a"), event(2, "a"), event(2, "a")], T0, lease_seconds=LEASE)
    assert again.duplicate and again.leases == ()
    assert [lease.webhook for lease in fresh.leases] == ["a"]
    assert copy.duplicate and copy.leases == ()


def test_enqueue_leases_follow_the_webhook_order_once_per_webhook(store: Store) -> None:
    """A webhook named twice gets one delivery and one lease, in the order webhooks were first named."""
    [result] = store.enqueue([event(1, "c", "a", "c", "b")], T0, lease_seconds=LEASE)
    assert [lease.webhook for lease in result.leases] == ["c", "a", "b"]
    assert [lease.delivery_id for lease in result.leases] == list(result.delivery_ids)
    assert all(lease.attempts == 0 and lease.created_at == T0 for lease in result.leases)


def test_enqueue_leaves_deliveries_to_unleased_webhooks_for_the_scheduler(store: Store) -> None:
    """With lease_seconds, deliveries to webhooks named in ``unleased`` are created due, not leased."""
    [result] = store.enqueue([event(1, "fast", "slow")], T0, lease_seconds=LEASE, unleased={"slow"})
    assert [lease.webhook for lease in result.leases] == ["fast"]
    [due] = store.lease(T0, 10, LEASE)
    assert due.webhook == "slow"


def test_lease_excludes_leased_held_not_yet_due_delivered_and_dead(store: Store) -> None:
    """Only open, unheld, unleased deliveries whose time has come are leased."""
    for n in range(1, 5):
        enqueue_one(store, n)
    leased, held, later, delivered = store.lease(T0, 4, LEASE)
    store.record(
        [
            outcome(held, OutcomeKind.HOLD),
            outcome(later, OutcomeKind.RETRY, attempt=an_attempt(), next_attempt_at=T0 + 60),
            outcome(delivered, OutcomeKind.DELIVERED, attempt=an_attempt(204)),
        ],
        T0,
    )
    dead = lease_only(store, T0 + 60)  # the retried one, due now
    store.record([outcome(dead, OutcomeKind.DEAD, attempt=an_attempt(410), reason="410 Gone")], T0 + 60)
    due = enqueue_one(store, 5, now=T0 + 1)
    assert store.lease(T0, 10, LEASE) == []  # not yet due
    assert [lease.delivery_id for lease in store.lease(T0 + 10, 10, LEASE)] == [due]
    assert leased.expires_at < T0 + 10_000  # expired but not reclaimed: still leased
    assert store.lease(T0 + 10_000, 10, LEASE) == []


def test_lease_is_earliest_first_and_respects_limit(store: Store) -> None:
    """Leases come earliest due first (ties by id) and never more than the limit."""
    late = enqueue_one(store, 1, now=T0 + 3)
    early = enqueue_one(store, 2, now=T0 + 1)
    tie_a = enqueue_one(store, 3, now=T0 + 2)
    tie_b = enqueue_one(store, 4, now=T0 + 2)
    assert [lease.delivery_id for lease in store.lease(T0 + 5, 3, LEASE)] == [early, tie_a, tie_b]
    assert [lease.delivery_id for lease in store.lease(T0 + 5, 3, LEASE)] == [late]
    assert store.lease(T0 + 5, 0, LEASE) == []


def test_lease_passes_over_skipped_webhooks_and_keeps_them_due(store: Store) -> None:
    """Deliveries of skipped webhooks are not leased, even when earlier; they stay due for a later lease."""
    busy_first = enqueue_one(store, 1, "busy", now=T0)
    other = enqueue_one(store, 2, "other", now=T0 + 1)
    busy_second = enqueue_one(store, 3, "busy", now=T0 + 2)
    third = enqueue_one(store, 4, "third", now=T0 + 3)
    skipped = [lease.delivery_id for lease in store.lease(T0 + 5, 10, LEASE, skip={"busy", "absent"})]
    assert skipped == [other, third]
    assert store.next_due_at() == T0
    assert [lease.delivery_id for lease in store.lease(T0 + 5, 10, LEASE)] == [busy_first, busy_second]


def test_lease_passes_over_a_long_skipped_backlog_in_due_order(store: Store) -> None:
    """Behind a backlog of skipped webhooks many times the lease size, the others' due deliveries are still
    leased earliest first (ties by id), across webhooks, and nothing that is not yet due."""
    backlog = [NewEvent(f"{n:032x}", "package.created", b"{}", ("dead-a", "dead-b")) for n in range(60)]
    store.enqueue(backlog, T0)  # 120 skipped deliveries, due first
    expected: list[tuple[float, int]] = []
    for n in range(100, 112):
        at = T0 + 1 + (n % 4)  # four due times, three webhooks: ties across and within webhooks
        delivery_id = enqueue_one(store, n, f"live-{n % 3}", now=at)
        expected.append((at, delivery_id))
    enqueue_one(store, 200, "live-0", now=T0 + 50)  # not due yet
    due_order = [delivery_id for _, delivery_id in sorted(expected)]
    skip = {"dead-a", "dead-b"}
    first = [lease.delivery_id for lease in store.lease(T0 + 10, 5, LEASE, skip=skip)]
    assert first == due_order[:5]
    rest = [lease.delivery_id for lease in store.lease(T0 + 10, 50, LEASE, skip=skip)]
    assert rest == due_order[5:]
    assert store.lease(T0 + 10, 5, LEASE, skip=skip) == []
    assert len(store.lease(T0 + 10, 500, LEASE)) == 120


def test_record_with_stale_lease_id_is_ignored(store: Store) -> None:
    """After a reclaim and a new lease, an outcome carrying the old lease id changes nothing."""
    enqueue_one(store, 1)
    first = lease_only(store, T0)
    assert store.reclaim_expired(T0 + LEASE) == 1
    second = lease_only(store, T0 + LEASE)
    assert second.lease_id != first.lease_id
    assert store.record([outcome(first, OutcomeKind.DELIVERED, attempt=an_attempt(200))], T0 + LEASE) == 0
    detail = store.get_delivery(first.delivery_id)
    assert detail is not None and detail.attempts == () and detail.delivery.status is DeliveryStatus.PENDING
    assert store.record([outcome(second, OutcomeKind.DELIVERED, attempt=an_attempt(200))], T0 + LEASE) == 1


def test_record_counts_only_applied_outcomes(store: Store) -> None:
    """A batch of outcomes applies in one go and counts only those whose lease matches."""
    for n in range(1, 4):
        enqueue_one(store, n)
    a, b, c = store.lease(T0, 3, LEASE)
    stale = Outcome(c.delivery_id, c.lease_id + 1000, OutcomeKind.DELIVERED, attempt=an_attempt(200))
    unknown = Outcome(999_999, 1, OutcomeKind.DELIVERED, attempt=an_attempt(200))
    batch = [
        outcome(a, OutcomeKind.DELIVERED, attempt=an_attempt(200)),
        outcome(b, OutcomeKind.RETRY, attempt=an_attempt(), next_attempt_at=T0 + 5),
        outcome(a, OutcomeKind.DEAD, reason="second outcome for one lease"),
        stale,
        unknown,
    ]
    assert store.record(batch, T0) == 2
    assert [status_of(store, lease.delivery_id) for lease in (a, b, c)] == [
        DeliveryStatus.DELIVERED,
        DeliveryStatus.FAILED,
        DeliveryStatus.PENDING,
    ]
    assert store.record([], T0) == 0


def test_a_stale_outcome_does_not_hide_the_current_one_in_the_same_batch(store: Store) -> None:
    """In one batch, an outcome from an old lease is skipped and the current lease's outcome still applies."""
    enqueue_one(store, 1)
    old = lease_only(store, T0)
    store.reclaim_expired(T0 + LEASE)
    current = lease_only(store, T0 + LEASE)
    batch = [
        outcome(old, OutcomeKind.DEAD, reason="stale worker"),
        outcome(current, OutcomeKind.DELIVERED, attempt=an_attempt(200)),
    ]
    assert store.record(batch, T0 + LEASE) == 1
    assert status_of(store, current.delivery_id) is DeliveryStatus.DELIVERED


def test_reclaim_expired_makes_expired_leases_due_and_keeps_live_ones(store: Store) -> None:
    """Expired leases become due again; leases still running are untouched."""
    enqueue_one(store, 1)
    short = lease_only(store, T0, lease_seconds=10)
    enqueue_one(store, 2)
    long = lease_only(store, T0, lease_seconds=100)
    assert store.reclaim_expired(T0 + 9) == 0
    assert store.reclaim_expired(T0 + 10) == 1
    assert store.next_due_at() == T0
    assert [lease.delivery_id for lease in store.lease(T0 + 10, 10, LEASE)] == [short.delivery_id]
    assert store.record([outcome(long, OutcomeKind.DELIVERED, attempt=an_attempt(200))], T0 + 11) == 1


def test_retry_increments_attempts_and_schedules_the_next_one(store: Store) -> None:
    """RETRY counts the attempt, marks the delivery failed and makes it due at the given time."""
    delivery_id = enqueue_one(store, 1)
    lease = lease_only(store, T0)
    retry = outcome(lease, OutcomeKind.RETRY, attempt=an_attempt(503, error="busy"), next_attempt_at=T0 + 300)
    assert store.record([retry], T0 + 1) == 1
    detail = store.get_delivery(delivery_id)
    assert detail is not None
    delivery = detail.delivery
    assert (delivery.status, delivery.attempts, delivery.next_attempt_at) == (
        DeliveryStatus.FAILED,
        1,
        T0 + 300,
    )
    assert (delivery.last_status_code, delivery.last_error) == (503, "busy")
    assert store.next_due_at() == T0 + 300
    assert store.lease(T0 + 299, 10, LEASE) == []
    assert lease_only(store, T0 + 300).attempts == 1


def test_dead_records_the_reason(store: Store) -> None:
    """DEAD buries with its reason, counting the attempt only when one is given."""
    with_attempt = enqueue_one(store, 1)
    without = enqueue_one(store, 2)
    a, b = store.lease(T0, 2, LEASE)
    store.record(
        [
            outcome(a, OutcomeKind.DEAD, attempt=an_attempt(410), reason="410 Gone"),
            outcome(b, OutcomeKind.DEAD, reason="max attempts reached"),
        ],
        T0,
    )
    first, second = store.get_delivery(with_attempt), store.get_delivery(without)
    assert first is not None and second is not None
    assert (first.delivery.status, first.delivery.dead_reason, first.delivery.attempts) == (
        DeliveryStatus.DEAD,
        "410 Gone",
        1,
    )
    assert (second.delivery.dead_reason, second.delivery.attempts, second.attempts) == (
        "max attempts reached",
        0,
        (),
    )
    assert second.delivery.next_attempt_at is None
    assert store.lease(T0 + 10_000, 10, LEASE) == []


def test_hold_parks_until_release_held(store: Store) -> None:
    """HOLD gives the lease back and parks the delivery (never due) until its webhook's are released."""
    parked = enqueue_one(store, 1, "paused")
    enqueue_one(store, 2, "other")
    for lease in store.lease(T0, 10, LEASE):
        if lease.webhook == "paused":
            assert store.record([outcome(lease, OutcomeKind.HOLD)], T0) == 1
    assert store.lease(T0 + 10_000, 10, LEASE) == []
    assert store.next_due_at() is None
    assert store.open_webhooks() == {"paused", "other"}
    assert store.release_held("other", T0 + 50) == 0
    assert store.release_held("paused", T0 + 50) == 1
    assert store.next_due_at() == T0 + 50
    lease = lease_only(store, T0 + 50)
    assert (lease.delivery_id, lease.attempts) == (parked, 0)


def test_release_gives_the_lease_back_without_an_attempt(store: Store) -> None:
    """RELEASE clears the lease, keeps the attempt count and makes the delivery due at the given time."""
    delivery_id = enqueue_one(store, 1)
    lease = lease_only(store, T0)
    assert store.record([outcome(lease, OutcomeKind.RELEASE, next_attempt_at=T0 + 7)], T0) == 1
    detail = store.get_delivery(delivery_id)
    assert detail is not None
    assert (detail.delivery.status, detail.delivery.attempts, detail.attempts) == (
        DeliveryStatus.PENDING,
        0,
        (),
    )
    assert store.next_due_at() == T0 + 7
    assert lease_only(store, T0 + 7).delivery_id == delivery_id


def test_bury_webhook_kills_open_deliveries_and_leaves_leased_ones(store: Store) -> None:
    """Burying a webhook kills its open, unleased deliveries (held ones too), never in-flight or others'."""
    pending = enqueue_one(store, 1, "gone")
    held, failed = enqueue_one(store, 2, "gone"), enqueue_one(store, 3, "gone")
    leases = {lease.delivery_id: lease for lease in store.lease(T0, 10, LEASE)}
    store.record(
        [
            outcome(leases[pending], OutcomeKind.RELEASE, next_attempt_at=T0 + 60),
            outcome(leases[held], OutcomeKind.HOLD),
            outcome(leases[failed], OutcomeKind.RETRY, attempt=an_attempt(), next_attempt_at=T0 + 60),
        ],
        T0,
    )
    in_flight = enqueue_one(store, 4, "gone")
    flight_lease = lease_only(store, T0)
    other = enqueue_one(store, 5, "kept")
    assert store.bury_webhook("gone", "webhook removed", T0 + 1) == 3
    for delivery_id in (pending, held, failed):
        detail = store.get_delivery(delivery_id)
        assert detail is not None
        assert (detail.delivery.status, detail.delivery.dead_reason) == (
            DeliveryStatus.DEAD,
            "webhook removed",
        )
    assert status_of(store, in_flight) is DeliveryStatus.PENDING
    assert status_of(store, other) is DeliveryStatus.PENDING
    assert store.release_held("gone", T0 + 2) == 0
    assert store.record([outcome(flight_lease, OutcomeKind.DELIVERED, attempt=an_attempt(200))], T0 + 2) == 1


def test_requeue_restarts_the_schedule_and_keeps_history(store: Store) -> None:
    """Requeue makes a dead delivery due now with attempts back to 0; earlier attempts stay listed."""
    delivery_id = enqueue_one(store, 1)
    lease = lease_only(store, T0)
    store.record([outcome(lease, OutcomeKind.RETRY, attempt=an_attempt(500), next_attempt_at=T0 + 5)], T0)
    lease = lease_only(store, T0 + 5)
    store.record(
        [outcome(lease, OutcomeKind.DEAD, attempt=an_attempt(502, at=T0 + 5), reason="max attempts reached")],
        T0 + 5,
    )
    delivered = enqueue_one(store, 2)
    store.record([outcome(lease_only(store, T0), OutcomeKind.DELIVERED, attempt=an_attempt(200))], T0)

    assert store.requeue([delivery_id, delivered, 424242], T0 + 100) == 1
    detail = store.get_delivery(delivery_id)
    assert detail is not None
    delivery = detail.delivery
    assert (delivery.status, delivery.attempts, delivery.next_attempt_at) == (
        DeliveryStatus.PENDING,
        0,
        T0 + 100,
    )
    assert delivery.dead_reason is None
    assert [a.number for a in detail.attempts] == [1, 2]
    lease = lease_only(store, T0 + 100)
    assert lease.attempts == 0
    store.record([outcome(lease, OutcomeKind.DELIVERED, attempt=an_attempt(200, at=T0 + 100))], T0 + 100)
    detail = store.get_delivery(delivery_id)
    assert detail is not None
    assert [(a.number, a.status_code) for a in detail.attempts] == [(1, 500), (2, 502), (3, 200)]
    assert detail.delivery.attempts == 1


def test_requeue_skips_deliveries_in_flight(store: Store) -> None:
    """A leased delivery is already being attempted: requeue leaves it and its lease alone."""
    delivery_id = enqueue_one(store, 1)
    lease = lease_only(store, T0)
    assert store.requeue([delivery_id], T0 + 1) == 0
    assert store.record([outcome(lease, OutcomeKind.DELIVERED, attempt=an_attempt(200))], T0 + 1) == 1


def test_requeue_dead_filters_by_webhook_and_since(store: Store) -> None:
    """requeue_dead revives dead deliveries only, optionally of one webhook and created since a time."""
    old_a = enqueue_one(store, 1, "a", now=T0)
    new_a = enqueue_one(store, 2, "a", now=T0 + 50)
    new_b = enqueue_one(store, 3, "b", now=T0 + 50)
    alive = enqueue_one(store, 4, "a", now=T0 + 50)
    leases = store.lease(T0 + 50, 10, LEASE)
    store.record(
        [outcome(lease, OutcomeKind.DEAD, reason="test") for lease in leases if lease.delivery_id != alive]
        + [outcome(lease, OutcomeKind.RELEASE) for lease in leases if lease.delivery_id == alive],
        T0 + 50,
    )
    assert store.requeue_dead(T0 + 60, webhook="a", since=T0 + 10) == 1
    assert status_of(store, new_a) is DeliveryStatus.PENDING
    assert [status_of(store, i) for i in (old_a, new_b)] == [DeliveryStatus.DEAD] * 2
    assert store.requeue_dead(T0 + 70, since=T0 + 10) == 1
    assert status_of(store, new_b) is DeliveryStatus.PENDING
    assert store.requeue_dead(T0 + 80) == 1
    assert store.counts()[DeliveryStatus.DEAD] == 0
    assert store.next_due_at() == T0 + 50  # the released one, due since then


def test_next_due_at_is_the_earliest_open_unleased_time(store: Store) -> None:
    """next_due_at is the earliest due time among open, unleased, unheld deliveries, or None."""
    assert store.next_due_at() is None
    enqueue_one(store, 1, now=T0 + 20)
    enqueue_one(store, 2, now=T0 + 10)
    assert store.next_due_at() == T0 + 10
    lease = lease_only(store, T0 + 10)
    assert store.next_due_at() == T0 + 20
    store.record([outcome(lease, OutcomeKind.RETRY, attempt=an_attempt(), next_attempt_at=T0 + 15)], T0 + 10)
    assert store.next_due_at() == T0 + 15


def test_list_deliveries_filters_newest_first(store: Store) -> None:
    """Listing filters by status, webhook and creation time, newest first, up to the limit."""
    ids = [enqueue_one(store, n, "a" if n % 2 else "b", now=T0 + n) for n in range(1, 7)]
    lease = next(lease for lease in store.lease(T0 + 10, 10, LEASE) if lease.delivery_id == ids[0])
    store.record([outcome(lease, OutcomeKind.DELIVERED, attempt=an_attempt(200))], T0 + 10)

    def listed(query: DeliveryQuery) -> list[int]:
        return [d.id for d in store.list_deliveries(query)]

    assert listed(DeliveryQuery()) == ids[::-1]
    assert listed(DeliveryQuery(limit=2)) == [ids[5], ids[4]]
    assert listed(DeliveryQuery(webhook="a")) == [ids[4], ids[2], ids[0]]
    assert listed(DeliveryQuery(status=DeliveryStatus.DELIVERED)) == [ids[0]]
    assert listed(DeliveryQuery(status=DeliveryStatus.PENDING, webhook="a")) == [ids[4], ids[2]]
    assert listed(DeliveryQuery(since=T0 + 4)) == [ids[5], ids[4], ids[3]]
    assert listed(DeliveryQuery(webhook="nobody")) == []
    (first,) = store.list_deliveries(DeliveryQuery(status=DeliveryStatus.DELIVERED))
    assert (first.event_uuid, first.event_type, first.webhook, first.attempts) == (
        f"{1:032x}",
        "package.created",
        "a",
        1,
    )
    assert (first.created_at, first.updated_at, first.last_status_code) == (T0 + 1, T0 + 10, 200)


def test_get_delivery_returns_body_and_attempts_in_order(store: Store) -> None:
    """A delivery's detail has the exact body and every attempt in order, with headers and excerpt."""
    delivery_id = enqueue_one(store, 7)
    lease = lease_only(store, T0)
    store.record(
        [
            outcome(
                lease,
                OutcomeKind.RETRY,
                attempt=an_attempt(None, error="connection refused"),
                next_attempt_at=T0,
            )
        ],
        T0,
    )
    lease = lease_only(store, T0)
    store.record([outcome(lease, OutcomeKind.DELIVERED, attempt=an_attempt(200, at=T0 + 1))], T0 + 2)
    detail = store.get_delivery(delivery_id)
    assert detail is not None
    assert detail.body == b'{"n": 7}'
    first, second = detail.attempts
    assert (first.number, first.status_code, first.error, first.started_at) == (
        1,
        None,
        "connection refused",
        T0,
    )
    assert (second.number, second.status_code, second.started_at, second.duration_seconds) == (
        2,
        200,
        T0 + 1,
        0.25,
    )
    assert second.response_headers == {"content-type": "text/plain"}
    assert second.response_excerpt == "answer 200"
    assert store.get_delivery(424242) is None


def test_counts_and_oldest_open_created_at(store: Store) -> None:
    """Counts have every status (zero when none); the oldest open delivery ignores delivered and dead ones."""
    assert store.counts() == dict.fromkeys(DeliveryStatus, 0)
    assert store.oldest_open_created_at() is None
    for n in range(1, 5):
        enqueue_one(store, n, now=T0 + n)
    delivered, failed, dead, _ = store.lease(T0 + 10, 10, LEASE)
    store.record(
        [
            outcome(delivered, OutcomeKind.DELIVERED, attempt=an_attempt(200)),
            outcome(failed, OutcomeKind.RETRY, attempt=an_attempt(), next_attempt_at=T0 + 100),
            outcome(dead, OutcomeKind.DEAD, reason="test"),
        ],
        T0 + 10,
    )
    assert store.counts() == {
        DeliveryStatus.PENDING: 1,
        DeliveryStatus.FAILED: 1,
        DeliveryStatus.DELIVERED: 1,
        DeliveryStatus.DEAD: 1,
    }
    assert store.oldest_open_created_at() == T0 + 2


def test_prune_removes_old_delivered_and_keeps_dead_and_recent(store: Store) -> None:
    """Prune deletes delivered deliveries older than the age with their events; dead and recent ones stay."""
    old = enqueue_one(store, 1, now=T0)
    dead = enqueue_one(store, 2, now=T0)
    recent = enqueue_one(store, 3, now=T0)
    store.enqueue([NewEvent(f"{4:032x}", "unrouted", b"{}", ())], T0)
    by_id = {lease.delivery_id: lease for lease in store.lease(T0, 10, LEASE)}
    store.record(
        [
            outcome(by_id[old], OutcomeKind.DELIVERED, attempt=an_attempt(200)),
            outcome(by_id[dead], OutcomeKind.DEAD, attempt=an_attempt(410), reason="410 Gone"),
        ],
        T0 + 1,
    )
    store.record([outcome(by_id[recent], OutcomeKind.DELIVERED, attempt=an_attempt(200))], T0 + 500)
    assert store.prune(T0 + 1000, delivered_older_than_seconds=600) == 1
    assert store.get_delivery(old) is None
    assert (
        status_of(store, dead) is DeliveryStatus.DEAD and status_of(store, recent) is DeliveryStatus.DELIVERED
    )
    # The pruned events left the dedupe window: their uuids are accepted again; the kept ones are not.
    again = store.enqueue(
        [event(1), event(2), event(3), NewEvent(f"{4:032x}", "unrouted", b"{}", ())], T0 + 1000
    )
    assert [r.duplicate for r in again] == [False, True, True, False]
    assert store.prune(T0 + 1000, delivered_older_than_seconds=600) == 0


def test_open_webhooks_names_webhooks_with_open_deliveries(store: Store) -> None:
    """Webhooks with pending, failed, held or leased deliveries are open; delivered or dead ones are not."""
    assert store.open_webhooks() == set()
    for n, webhook in enumerate(["done", "dead", "held", "leased", "waiting"], start=1):
        enqueue_one(store, n, webhook)
    leases = {lease.webhook: lease for lease in store.lease(T0, 10, LEASE)}
    store.record(
        [
            outcome(leases["done"], OutcomeKind.DELIVERED, attempt=an_attempt(200)),
            outcome(leases["dead"], OutcomeKind.DEAD, reason="test"),
            outcome(leases["held"], OutcomeKind.HOLD),
            outcome(leases["waiting"], OutcomeKind.RETRY, attempt=an_attempt(), next_attempt_at=T0 + 9),
        ],
        T0,
    )
    assert store.open_webhooks() == {"held", "leased", "waiting"}


def test_concurrent_threads_never_share_a_delivery(store: Store) -> None:
    """Threads enqueueing and leasing at once get distinct ids, and every delivery is leased exactly once."""

    def produce(worker: int) -> list[int]:
        results = [
            store.enqueue([event(worker * 1000 + n) for n in range(b * 10, b * 10 + 10)], T0)
            for b in range(10)
        ]
        return [i for batch in results for r in batch for i in r.delivery_ids]

    def consume(_: int) -> list[int]:
        return [lease.delivery_id for _ in range(40) for lease in store.lease(T0, 7, LEASE)]

    with ThreadPoolExecutor(4) as pool:
        created = [i for ids in pool.map(produce, range(4)) for i in ids]
    with ThreadPoolExecutor(4) as pool:
        leased = [i for ids in pool.map(consume, range(4)) for i in ids]
    assert len(created) == len(set(created)) == 400
    assert sorted(leased) == sorted(created)


def test_store_is_a_context_manager(tmp_path: Path) -> None:
    """Both backends close themselves at the end of a with block."""
    with SQLiteStore(tmp_path / "ctx.db") as sqlite_store, MemoryStore() as memory_store:
        assert sqlite_store.counts() == memory_store.counts()


def a_callback(label: str = "failed", url: str = "http://127.0.0.1:9/outcomes") -> NewCallback:
    return NewCallback("erp", url, label, b'{"outcome": "%s"}' % label.encode())


def record_with_callback(store: Store, now: float = T0, label: str = "failed") -> int:
    """Enqueue one delivery, fail its attempt with a callback attached; returns the delivery id."""
    delivery_id = enqueue_one(store, 1)
    lease = lease_only(store, now)
    failed = outcome(lease, OutcomeKind.RETRY, attempt=an_attempt(500), next_attempt_at=now + 5)
    assert store.record([replace(failed, callback=a_callback(label))], now) == 1
    return delivery_id


def test_an_outcome_stores_its_callback_in_the_same_record(store: Store) -> None:
    """A recorded outcome with a callback leaves one pending callback, due now, listable with its payload."""
    delivery_id = record_with_callback(store)
    (listed,) = store.list_callbacks(DeliveryQuery())
    assert (listed.delivery_id, listed.webhook, listed.label, listed.status, listed.attempts) == (
        delivery_id,
        "erp",
        "failed",
        DeliveryStatus.PENDING,
        0,
    )
    assert store.next_callback_due_at() == T0
    detail = store.get_callback(listed.id)
    assert detail is not None and detail.payload == b'{"outcome": "failed"}' and detail.attempts == ()


def test_a_stale_outcome_stores_no_callback(store: Store) -> None:
    """An outcome whose lease was reclaimed is skipped, and so is its callback."""
    enqueue_one(store, 1)
    lease = lease_only(store, T0)
    assert store.reclaim_expired(T0 + LEASE) == 1
    stale = outcome(lease, OutcomeKind.DELIVERED, attempt=an_attempt(204))
    assert store.record([replace(stale, callback=a_callback("delivered"))], T0 + LEASE) == 0
    assert store.list_callbacks(DeliveryQuery()) == []


def test_callbacks_are_leased_once_and_retried_until_delivered(store: Store) -> None:
    """A callback is leased with its url and payload, invisible while leased, rescheduled, then delivered."""
    record_with_callback(store)
    (lease,) = store.lease_callbacks(T0, 10, LEASE)
    assert (lease.url, lease.payload, lease.attempts, lease.expires_at) == (
        "http://127.0.0.1:9/outcomes",
        b'{"outcome": "failed"}',
        0,
        T0 + LEASE,
    )
    assert store.lease_callbacks(T0, 10, LEASE) == []
    retry = CallbackOutcome(lease.callback_id, lease.lease_id, OutcomeKind.RETRY, an_attempt(None), T0 + 5)
    assert store.record_callbacks([retry], T0 + 1) == 1
    assert store.next_callback_due_at() == T0 + 5
    assert store.lease_callbacks(T0 + 4, 10, LEASE) == []
    (again,) = store.lease_callbacks(T0 + 5, 10, LEASE)
    assert again.attempts == 1 and again.lease_id != lease.lease_id
    done = CallbackOutcome(again.callback_id, again.lease_id, OutcomeKind.DELIVERED, an_attempt(204))
    assert store.record_callbacks([done], T0 + 6) == 1
    assert store.record_callbacks([done], T0 + 7) == 0  # the lease is gone: stale
    detail = store.get_callback(lease.callback_id)
    assert detail is not None
    assert (detail.callback.status, detail.callback.attempts, detail.callback.last_status_code) == (
        DeliveryStatus.DELIVERED,
        2,
        204,
    )
    assert [a.number for a in detail.attempts] == [1, 2]
    assert store.next_callback_due_at() is None


def test_expired_callback_leases_are_reclaimed(store: Store) -> None:
    """A callback leased and never recorded becomes due again once its lease expires (at-least-once)."""
    record_with_callback(store)
    (lease,) = store.lease_callbacks(T0, 10, LEASE)
    assert store.reclaim_expired(T0 + LEASE - 1) == 0
    assert store.reclaim_expired(T0 + LEASE) == 1
    (again,) = store.lease_callbacks(T0 + LEASE, 10, LEASE)
    assert again.callback_id == lease.callback_id
    late = CallbackOutcome(lease.callback_id, lease.lease_id, OutcomeKind.DELIVERED, an_attempt(204))
    assert store.record_callbacks([late], T0 + LEASE) == 0


def test_a_released_callback_is_due_again_without_an_attempt(store: Store) -> None:
    """Releasing a callback lease (shutdown) makes it due at the given time and counts no attempt."""
    record_with_callback(store)
    (lease,) = store.lease_callbacks(T0, 10, LEASE)
    release = CallbackOutcome(lease.callback_id, lease.lease_id, OutcomeKind.RELEASE, next_attempt_at=T0 + 2)
    assert store.record_callbacks([release], T0 + 1) == 1
    (again,) = store.lease_callbacks(T0 + 2, 10, LEASE)
    assert again.attempts == 0


def test_dead_callbacks_stay_listed_and_can_be_requeued(store: Store) -> None:
    """A dead callback is listed by status with its reason and is due again after a requeue, by id or all."""
    record_with_callback(store)
    (lease,) = store.lease_callbacks(T0, 10, LEASE)
    dead = CallbackOutcome(
        lease.callback_id, lease.lease_id, OutcomeKind.DEAD, an_attempt(410), reason="410 Gone"
    )
    assert store.record_callbacks([dead], T0 + 1) == 1
    (listed,) = store.list_callbacks(DeliveryQuery(status=DeliveryStatus.DEAD))
    assert listed.dead_reason == "410 Gone" and listed.next_attempt_at is None
    assert store.list_callbacks(DeliveryQuery(status=DeliveryStatus.PENDING)) == []
    assert store.list_callbacks(DeliveryQuery(webhook="other")) == []
    assert store.requeue_callbacks([listed.id], T0 + 10) == 1
    (again,) = store.lease_callbacks(T0 + 10, 10, LEASE)
    assert again.attempts == 0
    dead = CallbackOutcome(
        again.callback_id, again.lease_id, OutcomeKind.DEAD, an_attempt(410), reason="410 Gone"
    )
    store.record_callbacks([dead], T0 + 11)
    assert store.requeue_dead_callbacks(T0 + 20, webhook="other") == 0
    assert store.requeue_dead_callbacks(T0 + 20, webhook="erp") == 1
    assert store.next_callback_due_at() == T0 + 20


def test_delivered_callbacks_are_pruned_and_dead_ones_kept(store: Store) -> None:
    """Prune removes delivered callbacks older than the window and keeps dead ones (and younger ones)."""
    for n, kind in ((1, OutcomeKind.DELIVERED), (2, OutcomeKind.DEAD)):
        enqueue_one(store, n)
        lease = lease_only(store, T0)
        store.record([replace(outcome(lease, OutcomeKind.DELIVERED), callback=a_callback("delivered"))], T0)
        (cb,) = store.lease_callbacks(T0, 10, LEASE)
        store.record_callbacks([CallbackOutcome(cb.callback_id, cb.lease_id, kind, reason="x")], T0)
    store.prune(T0 + 40, 50)
    assert len(store.list_callbacks(DeliveryQuery())) == 2
    store.prune(T0 + 100, 50)
    assert [c.status for c in store.list_callbacks(DeliveryQuery())] == [DeliveryStatus.DEAD]


def test_callbacks_and_deliveries_are_listed_by_delivery_id(store: Store) -> None:
    """A query with a delivery id lists that delivery only, and the callbacks reporting on it."""
    first = record_with_callback(store)
    second = enqueue_one(store, 2)
    assert [d.id for d in store.list_deliveries(DeliveryQuery(delivery_id=second))] == [second]
    assert [c.delivery_id for c in store.list_callbacks(DeliveryQuery(delivery_id=first))] == [first]
    assert store.list_callbacks(DeliveryQuery(delivery_id=second)) == []
