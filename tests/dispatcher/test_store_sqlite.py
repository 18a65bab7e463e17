"""What only the SQLite backend promises: durability across crashes, a shared file, clear errors."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dispatcher.errors import StoreError
from dispatcher.store import sqlite as sqlite_module
from dispatcher.store.base import (
    AttemptRecord,
    DeliveryQuery,
    DeliveryStatus,
    NewCallback,
    NewEvent,
    Outcome,
    OutcomeKind,
)
from dispatcher.store.schema import SCHEMA_VERSION
from dispatcher.store.sqlite import SQLiteStore

T0 = 1_000.0


def events(first: int, count: int, *webhooks: str) -> list[NewEvent]:
    return [
        NewEvent(f"{n:032x}", "package.created", b'{"n": %d}' % n, webhooks or ("erp",))
        for n in range(first, first + count)
    ]


def run_python(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    """Events, deliveries and attempts are all there after reopening; new ids continue after the old ones."""
    path = tmp_path / "store.db"
    with SQLiteStore(path) as store:
        (first,) = store.enqueue(events(1, 1), T0)
        (lease,) = store.lease(T0, 1, 30)
        attempt = AttemptRecord(T0, 0.5, 503, None, {"retry-after": "5"}, "busy")
        store.record([Outcome(lease.delivery_id, lease.lease_id, OutcomeKind.RETRY, attempt, T0 + 5)], T0)
    with SQLiteStore(path) as store:
        detail = store.get_delivery(first.delivery_ids[0])
        assert detail is not None
        assert (detail.delivery.status, detail.delivery.attempts, detail.body) == (
            DeliveryStatus.FAILED,
            1,
            b'{"n": 1}',
        )
        assert detail.attempts[0].response_headers == {"retry-after": "5"}
        assert store.enqueue(events(1, 1), T0)[0].duplicate
        (second,) = store.enqueue(events(2, 1), T0)
        assert second.delivery_ids[0] > first.delivery_ids[0]
        (again,) = store.lease(T0 + 5, 1, 30)
        assert again.lease_id > lease.lease_id


def test_acknowledged_events_survive_kill_9(tmp_path: Path) -> None:
    """A process killed with SIGKILL right after enqueue returned loses nothing; its leases are reclaimed."""
    path = tmp_path / "store.db"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import sys
                from dispatcher.store.base import NewEvent
                from dispatcher.store.sqlite import SQLiteStore
                store = SQLiteStore(sys.argv[1])
                batch = [NewEvent(f"{n:032x}", "package.created", b"{}", ("erp",)) for n in range(1, 101)]
                results = store.enqueue(batch, 1000.0, lease_seconds=30.0)
                print(sum(len(r.delivery_ids) for r in results), flush=True)
                sys.stdin.read()  # hold the store open until killed
                """
            ),
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "100"
        assert Path(f"{path}-wal").exists()  # the commit sits in the WAL, not yet checkpointed
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    with SQLiteStore(path) as store:
        assert store.counts()[DeliveryStatus.PENDING] == 100
        assert store.lease(T0, 200, 30) == []  # still leased by the dead process...
        assert store.reclaim_expired(T0 + 30) == 100  # ...until the leases are reclaimed
        assert len(store.lease(T0 + 30, 200, 30)) == 100
        assert all(r.duplicate for r in store.enqueue(events(1, 100), T0 + 30))


def test_another_connection_and_process_read_while_a_write_is_open(tmp_path: Path) -> None:
    """While one connection holds the write lock, others still read the last commit and writers time out."""
    path = tmp_path / "store.db"
    with SQLiteStore(path) as writer:
        writer.enqueue(events(1, 3), T0)
        with writer._write("test") as conn:  # hold the write lock, as a long enqueue would
            conn.execute("UPDATE deliveries SET status = 'dead'")  # not committed: invisible to readers
            result = run_python(
                """
                import sys
                from dispatcher.store.base import DeliveryStatus
                from dispatcher.store.sqlite import SQLiteStore
                with SQLiteStore(sys.argv[1]) as store:
                    print(store.counts()[DeliveryStatus.PENDING])
                """,
                str(path),
            )
            assert result.returncode == 0, result.stderr
            assert result.stdout.strip() == "3"
            with SQLiteStore(path, busy_timeout_seconds=0.05) as other:
                assert other.counts()[DeliveryStatus.PENDING] == 3
                assert len(other.list_deliveries(DeliveryQuery())) == 3
                with pytest.raises(StoreError, match="locked"):
                    other.enqueue(events(10, 1), T0)
            conn.execute("UPDATE deliveries SET status = 'pending'")
        with SQLiteStore(path) as other:
            other.enqueue(events(10, 1), T0)
        assert writer.counts()[DeliveryStatus.PENDING] == 4


def test_leases_returned_by_enqueue_are_in_the_file(tmp_path: Path) -> None:
    """The leases enqueue returns are durable: another connection sees those deliveries leased, not due."""
    path = tmp_path / "store.db"
    with SQLiteStore(path) as first, SQLiteStore(path) as second:
        results = first.enqueue(events(1, 2, "a", "b"), T0, lease_seconds=30)
        assert [len(r.leases) for r in results] == [2, 2]
        assert results[1].leases[1].event_uuid == f"{2:032x}" and results[1].leases[1].body == b'{"n": 2}'
        assert second.lease(T0, 10, 30) == []
        assert second.next_due_at() is None


def test_one_commit_stores_every_delivery_row_exactly_as_routed(tmp_path: Path) -> None:
    """A batch of events routed to many webhooks (leased and unleased mixed, names JSON must escape) becomes
    one row per (event, webhook) with consecutive ids, the lease token and expiry only on the leased ones."""
    path = tmp_path / "store.db"
    hooks = ("fast", 'q"uote', "back\\slash", "caf\u00e9", "stalled-1", "stalled-2")
    unleased = {'q"uote', "stalled-1", "stalled-2"}
    with SQLiteStore(path) as store:
        results = store.enqueue(events(1, 300, *hooks), T0, lease_seconds=30, unleased=unleased)
    ids = [i for r in results for i in r.delivery_ids]
    assert ids == list(range(1, 300 * len(hooks) + 1))
    token = results[0].leases[0].lease_id
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute(
            "SELECT d.id, e.uuid, d.webhook, d.lease_id, d.lease_expires_at, d.next_attempt_at, d.status,"
            " typeof(d.id), typeof(d.event_id) FROM deliveries AS d JOIN events AS e ON e.id = d.event_id"
            " ORDER BY d.id"
        ).fetchall()
    expected = [
        (
            1 + n * len(hooks) + k,
            bytes.fromhex(f"{n + 1:032x}"),
            hook,
            None if hook in unleased else token,
            None if hook in unleased else T0 + 30,
            T0,
            "pending",
            "integer",
            "integer",
        )
        for n in range(300)
        for k, hook in enumerate(hooks)
    ]
    assert rows == expected
    for result in results:
        assert [lease.webhook for lease in result.leases] == [h for h in hooks if h not in unleased]


def _body(n: int) -> bytes:
    """Any bytes, any length, every fifth one empty."""
    return b"" if n % 5 == 0 else bytes(range(n % 256)) * (n % 7) + b"{}"


@pytest.mark.parametrize(
    ("odd", "statement_bytes", "body"),
    [
        (None, 32 << 20, _body),
        (None, 1000, _body),
        (None, 32 << 20, lambda n: b""),
        (None, 10, lambda n: b"" if n % 3 else b"x" * 25),
        (NewEvent("not-a-uuid", "x", b"{}", ("erp",)), 32 << 20, _body),
        (NewEvent("00 11 22 33 44 55 66 77 88 99 aa", "x", b"{}", ("erp",)), 32 << 20, _body),
        (NewEvent(f"{9999:032x}", "a\0b", b"{}", ("erp",)), 32 << 20, _body),
        (NewEvent(f"{9999:032x}", "caf\u00e9.\U0001f600", b"{}", ("erp",)), 32 << 20, _body),
    ],
    ids=[
        "one statement",
        "statements of 1000 bytes",
        "every body empty",
        "empty bodies around bodies over the bound",
        "a key that is not hex",
        "a hex key that is not 16 bytes",
        "a type with a NUL",
        "a type that is not ASCII",
    ],
)
def test_a_commit_stores_every_event_exactly_as_given(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    odd: NewEvent | None,
    statement_bytes: int,
    body: Callable[[int], bytes],
) -> None:
    """Each event of a batch becomes one row with its own consecutive id, its key, its type (characters JSON
    must escape included) and its exact body bytes (any length, empty included, any byte), whether the batch
    goes in as one statement, as several (bounded by their bodies' bytes) or, when one event cannot, row by
    row; a duplicate of a stored event is skipped (its id is not used: ids are never reused)."""
    monkeypatch.setattr(sqlite_module, "_EVENTS_STATEMENT_BYTES", statement_bytes)
    types = ["package.created", 'q"uote', "back\\slash", "ctl\x01\n\x7f", "<tag>&'"]
    batch = [NewEvent(f"{n:032x}", types[n % len(types)], body(n), ("erp",)) for n in range(1, 400)]
    if odd is not None:
        batch.insert(200, odd)
    with SQLiteStore(tmp_path / "store.db") as store:
        assert not any(r.duplicate for r in store.enqueue(batch, T0))
        again = store.enqueue([batch[5], NewEvent(f"{5000:032x}", "t", b"", ())], T0 + 1)
    assert [r.duplicate for r in again] == [True, False]
    with contextlib.closing(sqlite3.connect(tmp_path / "store.db")) as conn:
        rows = conn.execute(
            "SELECT id, uuid, type, created_at, body, typeof(body) FROM events ORDER BY id"
        ).fetchall()
    key = sqlite_module._uuid_key
    expected = [(i, key(e.uuid), e.type, T0, e.body, "blob") for i, e in enumerate(batch, start=1)]
    assert rows == [*expected, (len(batch) + 2, key(f"{5000:032x}"), "t", T0 + 1, b"", "blob")]


def test_an_event_type_that_is_not_valid_unicode_is_refused_alone(tmp_path: Path) -> None:
    """A type holding a lone surrogate (which no UTF-8 column can hold) fails its enqueue before anything is
    stored, and the store goes on leasing what it holds (ingest then stores the batch's other events
    alone)."""
    with SQLiteStore(tmp_path / "store.db") as store:
        store.enqueue(events(1, 3), T0)
        with pytest.raises(UnicodeEncodeError):
            store.enqueue([*events(10, 3), NewEvent(f"{20:032x}", "bad\ud800type", b"{}", ("erp",))], T0)
        assert sorted(lease.event_uuid for lease in store.lease(T0, 10, 30)) == [
            f"{n:032x}" for n in (1, 2, 3)
        ]


def test_a_webhook_name_with_a_nul_is_stored_whole(tmp_path: Path) -> None:
    """A webhook name holding a NUL character (which SQLite's JSON functions would cut short) is stored and
    leased back unchanged, next to ordinary names in the same commit."""
    with SQLiteStore(tmp_path / "store.db") as store:
        store.enqueue(events(1, 2, "a\0b", "plain"), T0)
        leased = store.lease(T0, 10, 30)
    assert sorted(lease.webhook for lease in leased) == ["a\0b", "a\0b", "plain", "plain"]


def test_prune_works_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Prune removes every old delivered delivery and unrouted event across several chunks."""
    monkeypatch.setattr(sqlite_module, "PRUNE_CHUNK", 2)
    with SQLiteStore(tmp_path / "store.db") as store:
        store.enqueue(events(1, 5) + [NewEvent(f"{n:032x}", "x", b"{}", ()) for n in range(6, 10)], T0)
        leases = store.lease(T0, 10, 30)
        done = [Outcome(lease.delivery_id, lease.lease_id, OutcomeKind.DELIVERED) for lease in leases]
        assert store.record(done, T0) == 5
        store.enqueue(events(20, 1), T0 + 900)
        assert store.prune(T0 + 1000, 600) == 5
        assert store.counts()[DeliveryStatus.PENDING] == 1
        assert not any(r.duplicate for r in store.enqueue(events(1, 9), T0 + 1000))


def test_uuids_that_are_not_normalised_still_dedupe(tmp_path: Path) -> None:
    """A uuid that is not 32 hex digits is stored as given and still accepted only once."""
    with SQLiteStore(tmp_path / "store.db") as store:
        odd = NewEvent("not-a-uuid", "x", b"{}", ("erp",))
        assert [r.duplicate for r in store.enqueue([odd, odd], T0)] == [False, True]
        assert store.enqueue([odd], T0)[0].duplicate
        assert store.list_deliveries(DeliveryQuery())[0].event_uuid == "not-a-uuid"


def test_the_file_is_in_wal_mode(tmp_path: Path) -> None:
    """The database header says WAL (format versions 2), so readers never block the writer."""
    path = tmp_path / "store.db"
    SQLiteStore(path).close()
    assert path.read_bytes()[18:20] == b"\x02\x02"


def test_opening_a_directory_is_a_clear_error(tmp_path: Path) -> None:
    """A directory where the database file should be is refused with a message naming it."""
    with pytest.raises(StoreError, match="is a directory"):
        SQLiteStore(tmp_path)


def test_opening_in_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    """The store does not invent directories: a missing parent is reported."""
    with pytest.raises(StoreError, match="does not exist"):
        SQLiteStore(tmp_path / "missing" / "store.db")


def test_opening_a_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    """A file that is not a SQLite database is refused, not overwritten."""
    path = tmp_path / "store.db"
    path.write_bytes(b"certainly not a database\n" * 200)
    with pytest.raises(StoreError, match="not a SQLite database"):
        SQLiteStore(path)
    assert path.read_bytes().startswith(b"certainly not")


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    """A store written by a newer dispatcher (higher user_version) is refused rather than misread."""
    path = tmp_path / "store.db"
    SQLiteStore(path).close()
    header = bytearray(path.read_bytes())
    header[60:64] = (SCHEMA_VERSION + 1).to_bytes(4, "big")  # the user_version field
    path.write_bytes(bytes(header))
    newer = SCHEMA_VERSION + 1
    with pytest.raises(StoreError, match=f"schema version {newer} was written by a newer dispatcher"):
        SQLiteStore(path)


def test_a_closed_store_raises_store_error(tmp_path: Path) -> None:
    """Using a store after close raises StoreError, never a sqlite3 exception."""
    store = SQLiteStore(tmp_path / "store.db")
    store.close()
    with pytest.raises(StoreError):
        store.counts()
    with pytest.raises(StoreError):
        store.enqueue(events(1, 1), T0)


def test_synchronous_must_be_a_sqlite_level() -> None:
    """A misspelt synchronous level is a ValueError before any file is touched."""
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteStore("unused.db", synchronous="SOMETIMES")


def test_enqueue_commits_wait_for_the_disk_and_outcome_commits_need_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An enqueue (its ack promises durability) always commits at the configured level; leases and outcomes
    (lost to a power cut, they are only attempted again) commit at NORMAL, and never above the configured
    level."""
    levels: list[tuple[str, int]] = []
    real_write = SQLiteStore._write

    def spying_write(self: SQLiteStore, action: str, durable: bool = True) -> Any:
        with real_write(self, action, durable) as conn:
            levels.append((action, conn.execute("PRAGMA synchronous").fetchone()[0]))
            yield conn

    monkeypatch.setattr(SQLiteStore, "_write", contextlib.contextmanager(spying_write))
    with SQLiteStore(tmp_path / "full.db") as store:
        store.enqueue(events(1, 1), T0)
        (lease,) = store.lease(T0, 1, 30)
        store.record([Outcome(lease.delivery_id, lease.lease_id, OutcomeKind.DELIVERED, None)], T0)
        store.enqueue(events(2, 1), T0)
    full, normal = 2, 1
    assert levels[-4:] == [("enqueue", full), ("lease", normal), ("record", normal), ("enqueue", full)]
    levels.clear()
    with SQLiteStore(tmp_path / "off.db", synchronous="OFF") as store:
        store.enqueue(events(1, 1), T0)
        store.lease(T0, 1, 30)
    assert levels[-2:] == [("enqueue", 0), ("lease", 0)]


V1_SCHEMA = Path(__file__).parent / "fixtures" / "store_schema_v1.sql"


def write_v1_store(path: Path) -> None:
    """A store as the dispatcher before durable callbacks wrote it: schema version 1 and open deliveries."""
    conn = sqlite3.connect(path)
    try:
        conn.executescript(V1_SCHEMA.read_text())
        conn.executescript(
            """
            PRAGMA journal_mode = WAL;
            INSERT INTO events VALUES
                (1, X'000000000000000000000000000000a1', 'package.created', 1000, CAST('{"n":1}' AS BLOB)),
                (2, X'000000000000000000000000000000a2', 'package.created', 1001, CAST('{"n":2}' AS BLOB));
            INSERT INTO deliveries (id, event_id, webhook, status, attempts, next_attempt_at, lease_id,
                lease_expires_at, created_at, updated_at, dead_reason) VALUES
                (1, 1, 'erp', 'pending', 0, 1000, NULL, NULL, 1000, 1000, NULL),
                (2, 1, 'crm', 'failed', 2, 1005, 7, 1100, 1000, 1003, NULL),
                (3, 2, 'erp', 'dead', 8, NULL, NULL, NULL, 1001, 1004, 'max attempts reached (8)');
            INSERT INTO attempts (delivery_id, number, started_at, duration_seconds, status_code, error,
                response_headers, response_excerpt) VALUES (2, 1, 1001, 0.5, 500, NULL, '{}', 'oops');
            UPDATE counters SET next_event_id = 3, next_delivery_id = 4, next_lease_id = 8;
            """
        )
    finally:
        conn.close()


def test_a_version_1_store_is_migrated_in_place_keeping_every_delivery(tmp_path: Path) -> None:
    """A store written with schema version 1 opens, is migrated to the current version, and keeps every
    delivery, attempt, lease and counter; callbacks then work on it."""
    path = tmp_path / "store.db"
    write_v1_store(path)
    with SQLiteStore(path) as store:
        listed = {d.id: d for d in store.list_deliveries(DeliveryQuery())}
        assert {i: (d.status, d.attempts) for i, d in listed.items()} == {
            1: (DeliveryStatus.PENDING, 0),
            2: (DeliveryStatus.FAILED, 2),
            3: (DeliveryStatus.DEAD, 8),
        }
        detail = store.get_delivery(2)
        assert detail is not None and [a.response_excerpt for a in detail.attempts] == ["oops"]
        assert store.reclaim_expired(1200) == 1
        leases = store.lease(1200, 10, 30)
        assert sorted(lease.delivery_id for lease in leases) == [1, 2]
        assert all(lease.lease_id >= 8 for lease in leases)
        first = next(lease for lease in leases if lease.delivery_id == 1)
        callback = NewCallback("erp", "http://127.0.0.1:9/cb", "delivered", b'{"outcome":"delivered"}')
        attempt = AttemptRecord(started_at=1200, duration_seconds=0.1, status_code=204)
        outcome = Outcome(1, first.lease_id, OutcomeKind.DELIVERED, attempt, callback=callback)
        assert store.record([outcome], 1201) == 1
        assert [c.delivery_id for c in store.list_callbacks(DeliveryQuery())] == [1]
        assert store.enqueue(events(10, 1), 1300)[0].delivery_ids == (4,)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    finally:
        conn.close()


def test_a_migrated_store_opens_again_unchanged(tmp_path: Path) -> None:
    """Opening a migrated store again runs no migration twice and keeps its data."""
    path = tmp_path / "store.db"
    write_v1_store(path)
    SQLiteStore(path).close()
    with SQLiteStore(path) as store:
        assert len(store.list_deliveries(DeliveryQuery())) == 3
        assert store.list_callbacks(DeliveryQuery()) == []
