"""``dispatch store copy``: the open deliveries of a SQLite store move to PostgreSQL (or any store)."""

from __future__ import annotations

from pathlib import Path

from dispatcher.store.base import AttemptRecord, DeliveryQuery, DeliveryStatus, NewEvent, Outcome, OutcomeKind
from dispatcher.store.copy import copy_open
from dispatcher.store.memory import MemoryStore
from dispatcher.store.postgres import PostgresStore
from dispatcher.store.sqlite import SQLiteStore
from tests.e2e.harness import run_cli

T0 = 1_000.0


def _fill(store: SQLiteStore | MemoryStore) -> None:
    """Four events: one to two webhooks (both open), one failed with a retry due, one delivered, one dead."""
    store.enqueue(
        [
            NewEvent(f"{1:032x}", "package.created", b'{"n": 1}', ("erp", "wms")),
            NewEvent(f"{2:032x}", "package.created", b'{"n": 2}', ("erp",)),
            NewEvent(f"{3:032x}", "package.created", b'{"n": 3}', ("erp",)),
            NewEvent(f"{4:032x}", "package.created", b'{"n": 4}', ("erp",)),
        ],
        T0,
    )
    leases = {lease.event_uuid[-1]: lease for lease in store.lease(T0, 10, 30) if lease.webhook == "erp"}
    attempt = AttemptRecord(started_at=T0, duration_seconds=0.1, status_code=500)
    outcomes = [
        Outcome(leases["2"].delivery_id, leases["2"].lease_id, OutcomeKind.RETRY, attempt, T0 + 60),
        Outcome(leases["3"].delivery_id, leases["3"].lease_id, OutcomeKind.DELIVERED, attempt),
        Outcome(leases["4"].delivery_id, leases["4"].lease_id, OutcomeKind.DEAD, attempt, reason="410 Gone"),
        Outcome(leases["1"].delivery_id, leases["1"].lease_id, OutcomeKind.RELEASE, next_attempt_at=T0),
    ]
    store.record(outcomes, T0)
    store.reclaim_expired(T0 + 60)


def _open(store: PostgresStore | MemoryStore) -> set[tuple[str, str, bytes]]:
    found = set()
    for status in (DeliveryStatus.PENDING, DeliveryStatus.FAILED):
        for d in store.list_deliveries(DeliveryQuery(status=status, limit=100)):
            detail = store.get_delivery(d.id)
            assert detail is not None
            found.add((d.event_uuid, d.webhook, detail.body))
    return found


EXPECTED = {
    (f"{1:032x}", "erp", b'{"n": 1}'),
    (f"{1:032x}", "wms", b'{"n": 1}'),
    (f"{2:032x}", "erp", b'{"n": 2}'),
}


def test_copy_moves_open_deliveries_from_sqlite_to_postgresql(tmp_path: Path, pg_url: str) -> None:
    """The command copies the open deliveries (same events, bodies and webhooks), marks them moved in the
    source, leaves delivered and dead ones alone, and a second run finds nothing left to move."""
    path = tmp_path / "state" / "dispatch.db"
    path.parent.mkdir()
    with SQLiteStore(path) as source:
        _fill(source)
    done = run_cli("store", "copy", "--from", f"sqlite:///{path}", "--to", pg_url)
    assert done.returncode == 0, done.stderr
    assert "copied 3 open deliveries of 2 events" in done.stdout
    with PostgresStore(pg_url) as destination:
        assert _open(destination) == EXPECTED
        assert destination.counts()[DeliveryStatus.PENDING] == 3
    with SQLiteStore(path) as source:
        counts = source.counts()
        assert counts[DeliveryStatus.PENDING] == counts[DeliveryStatus.FAILED] == 0
        moved = source.list_deliveries(DeliveryQuery(status=DeliveryStatus.DEAD, limit=10))
        assert sorted(d.dead_reason or "" for d in moved)[0] == "410 Gone"
        assert sum((d.dead_reason or "").startswith("moved to postgresql://") for d in moved) == 3
    again = run_cli("store", "copy", "--from", f"sqlite:///{path}", "--to", pg_url)
    assert again.returncode == 0 and "copied 0 open deliveries" in again.stdout


def test_copy_keeping_the_source_is_idempotent() -> None:
    """With keep, the source stays open and a second copy stores nothing twice (the destination dedupes)."""
    source, destination = MemoryStore(), MemoryStore()
    _fill(source)
    first = copy_open(source, destination, T0, moved_to="memory", keep=True)
    second = copy_open(source, destination, T0, moved_to="memory", keep=True)
    assert (first.events, first.deliveries, first.moved_off) == (2, 3, 0)
    assert (second.events, second.duplicates) == (0, 2)
    assert _open(destination) == EXPECTED and source.counts()[DeliveryStatus.PENDING] == 2


def test_copy_refuses_a_missing_source(tmp_path: Path) -> None:
    """A SQLite source that does not exist is a one-line error, and nothing is created."""
    missing = tmp_path / "nothing" / "dispatch.db"
    done = run_cli("store", "copy", "--from", f"sqlite:///{missing}", "--to", f"sqlite:///{tmp_path}/x.db")
    assert done.returncode == 1 and "no store at" in done.stderr
    assert not missing.parent.exists()
