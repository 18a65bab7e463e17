"""What the PostgreSQL store adds to the contract: sharing one database between several dispatchers
(migrations at once, lease expiry on the database's clock, the shared per-endpoint limit, wake-ups by
NOTIFY, lease holders), counters that need no ``count(*)``, and URLs that never show a password."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from dispatcher.errors import StoreError
from dispatcher.store.base import AttemptRecord, DeliveryStatus, NewEvent, Outcome, OutcomeKind
from dispatcher.store.open import choose, describe
from dispatcher.store.pgschema import SCHEMA_VERSION
from dispatcher.store.postgres import PostgresStore
from dispatcher.store.url import parse, redact

T0 = 1_000.0


def event(n: int, *webhooks: str) -> NewEvent:
    return NewEvent(f"{n:032x}", "package.created", b"{}", webhooks or ("erp",))


def answered(code: int | None) -> AttemptRecord:
    return AttemptRecord(started_at=T0, duration_seconds=0.1, status_code=code)


def delivered(lease_id: int, delivery_id: int, code: int | None = 200) -> Outcome:
    return Outcome(delivery_id, lease_id, OutcomeKind.DELIVERED, answered(code))


def test_several_dispatchers_migrate_a_new_database_at_once(pg_url: str) -> None:
    """Eight stores opening one empty database at the same moment all succeed on one schema version."""
    with ThreadPoolExecutor(8) as pool:
        stores = list(pool.map(lambda _: PostgresStore(pg_url), range(8)))
    try:
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT version FROM dispatch_schema").fetchall() == [(SCHEMA_VERSION,)]
        stores[0].enqueue([event(1)], T0)
        assert all(s.counts()[DeliveryStatus.PENDING] == 1 for s in stores)
    finally:
        for s in stores:
            s.close()


def test_a_schema_newer_than_the_code_is_refused(pg_url: str) -> None:
    """A database migrated by a newer dispatcher is refused with a message that says so."""
    PostgresStore(pg_url).close()
    with psycopg.connect(pg_url) as conn:
        conn.execute("UPDATE dispatch_schema SET version = 99")
    with pytest.raises(StoreError, match="schema version 99 was written by a newer dispatcher"):
        PostgresStore(pg_url)


def test_lease_expiry_follows_the_database_clock_not_the_callers(pg_url: str) -> None:
    """A dispatcher whose clock runs an hour ahead leases on the database's clock: another dispatcher,
    on time, does not reclaim its live lease, and reclaims it once it has really expired."""
    skew = 3600.0
    with (
        PostgresStore(pg_url, clock=lambda: time.time() + skew) as ahead,
        PostgresStore(pg_url) as on_time,
    ):
        ahead.enqueue([event(1)], time.time() + skew)
        (lease,) = ahead.lease(time.time() + skew, 10, 30.0)
        assert on_time.reclaim_expired(time.time()) == 0
        assert ahead.reclaim_expired(time.time() + skew) == 0
        assert on_time.reclaim_expired(time.time() + 31.0) == 1
        assert ahead.record([delivered(lease.lease_id, lease.delivery_id)], time.time() + skew) == 0


def test_the_per_endpoint_limit_is_shared_between_stores(pg_url: str) -> None:
    """With a shared limit of 2, two dispatchers together hold one lease on an endpoint that has not
    answered yet, two once it answered healthy, and one again while it fails."""
    with PostgresStore(pg_url) as a, PostgresStore(pg_url) as b:
        for store in (a, b):
            store.share_limits(lambda webhook: "http://erp:80", 2)
        a.enqueue([event(n) for n in range(1, 11)], T0)
        (first,) = a.lease(T0, 10, 30.0)
        assert b.lease(T0, 10, 30.0) == []
        assert a.record([delivered(first.lease_id, first.delivery_id)], T0) == 1
        assert len(a.lease(T0, 1, 30.0)) == 1 and len(b.lease(T0, 10, 30.0)) == 1
        assert a.lease(T0, 10, 30.0) == [] and b.lease(T0, 10, 30.0) == []
        a.reclaim_expired(T0 + 31.0)
        (third,) = b.lease(T0 + 31.0, 1, 30.0)
        failing = Outcome(
            third.delivery_id, third.lease_id, OutcomeKind.RETRY, answered(503), next_attempt_at=T0 + 99
        )
        assert b.record([failing], T0 + 31.0) == 1
        assert len(a.lease(T0 + 31.0, 10, 30.0)) == 1
        assert b.lease(T0 + 31.0, 10, 30.0) == []


def test_a_shared_limit_creates_new_deliveries_unleased(pg_url: str) -> None:
    """Once the limit is shared, enqueue leases nothing (the limit has no side door): a lease finds them."""
    with PostgresStore(pg_url) as store:
        store.share_limits(lambda webhook: "http://erp:80", 4)
        (result,) = store.enqueue([event(1)], T0, lease_seconds=30.0)
        assert result.leases == ()
        assert len(store.lease(T0, 10, 30.0)) == 1


def test_enqueue_returns_the_leases_it_created(pg_url: str) -> None:
    """With lease_seconds, each result carries the leases of its deliveries, those to unleased webhooks
    left out, in the order of the event's webhooks."""
    with PostgresStore(pg_url) as store:
        (result,) = store.enqueue([event(1, "b", "a", "slow")], T0, lease_seconds=30.0, unleased={"slow"})
        assert [lease.webhook for lease in result.leases] == ["b", "a"]
        assert [lease.delivery_id for lease in result.leases] == list(result.delivery_ids[:2])
        assert {lease.expires_at for lease in result.leases} == {T0 + 30.0}


def test_work_made_due_by_one_store_wakes_the_listeners_of_another(pg_url: str) -> None:
    """A requeue through one connection (``dispatch deliveries retry`` elsewhere) wakes a listening store."""
    woken = threading.Event()
    with PostgresStore(pg_url) as listener, PostgresStore(pg_url) as other:
        listener.listen(woken.set)
        assert woken.wait(10)  # the listener wakes once when it starts listening
        woken.clear()
        (result,) = other.enqueue([event(1)], T0)
        assert woken.wait(10)
        woken.clear()
        (lease,) = other.lease(T0, 1, 30.0)
        other.record([Outcome(lease.delivery_id, lease.lease_id, OutcomeKind.DEAD, reason="x")], T0)
        woken.clear()
        assert other.requeue(list(result.delivery_ids), T0) == 1
        assert woken.wait(10)


def test_holders_counts_dispatchers_with_live_leases(pg_url: str) -> None:
    """``holders`` counts the distinct dispatchers holding unexpired leases."""
    now = time.time()
    with PostgresStore(pg_url) as a, PostgresStore(pg_url) as b:
        a.enqueue([event(n) for n in range(1, 5)], now)
        assert a.holders(now) == 0
        a.lease(now, 1, 30.0)
        b.lease(now, 1, 30.0)
        assert a.holders(now) == 2
        assert describe(a, now) == {"backend": "postgresql", "url": a.name, "lease_holders": 2}
        assert a.holders(now + 31.0) == 0


def test_counts_follow_updates_and_prunes_without_counting_rows(pg_url: str) -> None:
    """Per-status counts stay exact through leases, outcomes and prunes (kept by triggers, not count(*))."""
    with PostgresStore(pg_url) as store:
        store.enqueue([event(n) for n in range(1, 2001)], T0)
        leases = store.lease(T0, 1500, 30.0)
        store.record([delivered(lease.lease_id, lease.delivery_id) for lease in leases], T0)
        assert store.counts()[DeliveryStatus.DELIVERED] == 1500
        assert store.counts()[DeliveryStatus.PENDING] == 500
        assert store.prune(T0 + 100, 10) == 1500
        assert store.counts() == {
            DeliveryStatus.PENDING: 500,
            DeliveryStatus.FAILED: 0,
            DeliveryStatus.DELIVERED: 0,
            DeliveryStatus.DEAD: 0,
        }


def test_a_store_that_cannot_be_reached_is_one_line_without_the_password() -> None:
    """Opening a store on a socket directory that does not exist fails with the redacted URL."""
    url = "postgresql://oms:hunter2secret@/db?host=/nonexistent-dir-for-test&connect_timeout=2"
    with pytest.raises(StoreError) as caught:
        PostgresStore(url)
    assert "hunter2secret" not in str(caught.value) and "oms:***@" in str(caught.value)


def test_store_urls_are_parsed_and_redacted() -> None:
    """sqlite:/// and postgresql:// URLs parse; the password (user-info or parameter) never shows."""
    assert parse("sqlite:////var/lib/dispatch/x.db").path is not None
    assert str(parse("sqlite:////var/lib/dispatch/x.db").path) == "/var/lib/dispatch/x.db"
    assert parse("postgres://h/db").kind == "postgresql"
    assert redact("postgresql://oms:pw@db.internal:5432/oms") == "postgresql://oms:***@db.internal:5432/oms"
    assert (
        redact("postgresql:///oms?host=/run/pg&password=pw") == "postgresql:///oms?host=/run/pg&password=***"
    )
    with pytest.raises(StoreError, match=r"redis://x:\*\*\*@h"):
        parse("redis://x:pw@h")
    assert choose(None, {"DISPATCH_STORE": "postgresql:///oms"}) == parse("postgresql:///oms")
    assert choose("sqlite:///x.db", {"DISPATCH_STORE": "postgresql:///oms"}) == parse("sqlite:///x.db")
    assert choose(None, {}) is None


def test_a_shared_lease_leaves_webhooks_this_dispatcher_does_not_have(pg_url: str) -> None:
    """Deliveries to a webhook missing from one dispatcher's table (a rollout adding it) are not leased by
    that dispatcher, so it never buries them; one that has the webhook leases them."""
    with PostgresStore(pg_url) as old_tree, PostgresStore(pg_url) as new_tree:
        old_tree.share_limits(lambda webhook: "http://erp:80" if webhook == "erp" else None, 4)
        new_tree.share_limits(lambda webhook: "http://" + webhook + ":80", 4)
        new_tree.enqueue([event(1, "added"), event(2, "erp")], T0)
        assert [lease.webhook for lease in old_tree.lease(T0, 10, 30.0)] == ["erp"]
        assert [lease.webhook for lease in new_tree.lease(T0, 10, 30.0)] == ["added"]
