"""The SQLite store's due-by-webhook index (schema v3): the migration that adds it, and a lease that passes
over a dead endpoint's backlog without stepping over it row by row."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from dispatcher.store import schema
from dispatcher.store import sqlite as sqlite_module
from dispatcher.store.base import AttemptRecord, DeliveryQuery, DeliveryStatus, NewEvent, Outcome, OutcomeKind
from dispatcher.store.memory import MemoryStore
from dispatcher.store.sqlite import SQLiteStore

T0 = 1_000.0
LEASE = 30.0


def new_events(first: int, count: int, *webhooks: str) -> list[NewEvent]:
    return [
        NewEvent(f"{n:032x}", "package.created", b'{"n": %d}' % n, webhooks)
        for n in range(first, first + count)
    ]


def write_v2_store(path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[int, DeliveryStatus]:
    """A store created and used by this code as it was at schema version 2; the status of each delivery."""
    with monkeypatch.context() as m:
        m.setattr(sqlite_module, "MIGRATIONS", schema.MIGRATIONS[:1])
        m.setattr(sqlite_module, "SCHEMA_VERSION", 2)
        with SQLiteStore(path) as store:
            store.enqueue(new_events(0, 300, "dead", "live"), T0)
            (leased,) = store.lease(T0, 1, LEASE)  # in flight at the upgrade: stays leased
            failed, delivered = store.lease(T0, 2, LEASE)
            attempt = AttemptRecord(started_at=T0, duration_seconds=0.1, status_code=500)
            store.record(
                [
                    Outcome(
                        failed.delivery_id,
                        failed.lease_id,
                        OutcomeKind.RETRY,
                        attempt,
                        next_attempt_at=T0 + 5,
                    ),
                    Outcome(delivered.delivery_id, delivered.lease_id, OutcomeKind.DELIVERED, attempt),
                ],
                T0 + 1,
            )
            assert leased.delivery_id not in (failed.delivery_id, delivered.delivery_id)
            statuses = {d.id: d.status for d in store.list_deliveries(DeliveryQuery(limit=1000))}
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (2,)
        assert not conn.execute(
            "SELECT 1 FROM sqlite_schema WHERE name = 'deliveries_due_webhook'"
        ).fetchall()
    finally:
        conn.close()
    return statuses


def test_a_version_2_store_gains_the_index_and_keeps_every_delivery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A v2 store written by this code opens at v3 with the due-by-webhook index, every delivery and its
    status kept, and its due work leased as before, passing over a skipped webhook."""
    path = tmp_path / "store.db"
    before = write_v2_store(path, monkeypatch)
    assert len(before) == 600 and sum(s is DeliveryStatus.PENDING for s in before.values()) == 598
    with SQLiteStore(path) as store:
        after = {d.id: d.status for d in store.list_deliveries(DeliveryQuery(limit=1000))}
        assert after == before
        live = store.lease(T0 + 10, 1000, LEASE, skip={"dead"})
        dead = store.lease(T0 + 10, 1000, LEASE)
    assert {lease.webhook for lease in live} == {"live"} and {lease.webhook for lease in dead} == {"dead"}
    assert (
        len(live) + len(dead) == 598
    )  # all but the one in flight and the delivered one (the failed one is due)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (3,) == (schema.SCHEMA_VERSION,)
        (sql,) = conn.execute(
            "SELECT sql FROM sqlite_schema WHERE name = 'deliveries_due_webhook'"
        ).fetchone()
        assert "(webhook, next_attempt_at)" in sql and schema.DUE_CONDITION in sql
    finally:
        conn.close()


def plan(conn: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> list[str]:
    return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]


def test_the_skipping_lease_queries_are_served_by_the_due_indexes(tmp_path: Path) -> None:
    """EXPLAIN QUERY PLAN: the head of the due queue is read from deliveries_due in order, the other webhooks
    are found by seeks in deliveries_due_webhook and their due rows read from it in order; no query scans the
    deliveries table, and only the one-row-per-webhook list is sorted."""
    with SQLiteStore(tmp_path / "store.db") as store:
        store.enqueue(new_events(0, 10, "dead", "live"), T0)
        conn = store._reader
        head = plan(conn, sqlite_module._DUE_HEAD, (T0, 20))
        webhooks = plan(conn, sqlite_module._DUE_WEBHOOKS_SKIPPING, (T0, '["dead"]', 5))
        rows = plan(conn, sqlite_module._DUE_OF_WEBHOOK, ("live", T0, 5))
    assert head == ["SEARCH deliveries USING INDEX deliveries_due (next_attempt_at<?)"]
    assert "SEARCH n USING INDEX deliveries_due_webhook (webhook>?)" in webhooks
    assert not [step for step in webhooks if step.startswith("SCAN deliveries")]
    assert rows == ["SEARCH deliveries USING INDEX deliveries_due_webhook (webhook=? AND next_attempt_at<?)"]


def lease_cost(path: Path, backlog: int) -> int:
    """SQLite virtual-machine steps (in thousands) of one lease passing over ``backlog`` skipped deliveries
    due before the one other due delivery."""
    with SQLiteStore(path) as store:
        store.enqueue(new_events(0, backlog, "dead"), T0)
        store.enqueue(new_events(backlog, 1, "live"), T0 + 1)
        steps = 0

        def count() -> int:
            nonlocal steps
            steps += 1
            return 0

        store._reader.set_progress_handler(count, 1000)
        leases = store.lease(T0 + 2, 50, LEASE, skip={"dead"})
        store._reader.set_progress_handler(None, 0)
    assert [lease.webhook for lease in leases] == ["live"]
    return steps


def test_a_lease_does_not_step_over_a_skipped_backlog(tmp_path: Path) -> None:
    """Ten times the skipped backlog costs a skipping lease about the same work, not ten times more (before
    the index it read every skipped due row)."""
    small = lease_cost(tmp_path / "small.db", 2_000)
    large = lease_cost(tmp_path / "large.db", 20_000)
    assert large <= 2 * max(small, 1), (small, large)


def test_a_skipping_lease_matches_the_memory_store_on_random_backlogs(tmp_path: Path) -> None:
    """On seeded random backlogs (skipped webhooks' rows mixed with and ahead of the others', equal due
    times), every skipping lease of the SQLite store returns what the memory store does, in the same order."""
    rng = random.Random(13)
    for trial in range(12):
        sqlite_store, memory_store = SQLiteStore(tmp_path / f"trial-{trial}.db"), MemoryStore()
        try:
            hooks = [f"hook-{i}" for i in range(rng.randint(2, 9))]
            skip = set(rng.sample(hooks, rng.randint(1, len(hooks) - 1)))
            backlog = rng.randint(0, 300)  # events to skipped webhooks only, mostly due first
            for n in range(backlog + rng.randint(50, 300)):
                pool = sorted(skip) if n < backlog else hooks
                webhooks = tuple(rng.sample(pool, rng.randint(1, min(3, len(pool)))))
                at = T0 + rng.choice((0, 0, 1) if n < backlog else (0, 1, 2, 3, 50))
                for store in (sqlite_store, memory_store):
                    store.enqueue(new_events(n, 1, *webhooks), at)
            while True:
                limit = rng.randint(1, 40)
                got = [lease.delivery_id for lease in sqlite_store.lease(T0 + 10, limit, LEASE, skip=skip)]
                want = [lease.delivery_id for lease in memory_store.lease(T0 + 10, limit, LEASE, skip=skip)]
                assert got == want, (trial, limit)
                if not want:
                    break
        finally:
            sqlite_store.close()
            memory_store.close()
