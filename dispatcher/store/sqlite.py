"""The SQLite backend: one WAL-mode file, the dispatcher's default store (the only module importing sqlite3).

Decisions worth knowing:

- Ids (events, deliveries, lease tokens) come from one ``counters`` row read and bumped inside the write
  transaction, so a batch is inserted without a round trip per row (a commit's deliveries in one statement),
  and delivery ids are never reused after a prune (``deliveries show 42`` keeps meaning one delivery).
- A lease token is one per ``lease()``/``enqueue()`` call and strictly increasing: the same delivery leased
  twice always gets two tokens, so an outcome from the first holder (after a reclaim) is recognised as stale.
- ``deliveries.attempts`` counts attempts in the *current schedule* (the retry policy reads it; a requeue
  resets it to 0). ``AttemptLog.number`` is the attempt row's ordinal and continues across requeues, so
  ``deliveries show`` keeps the whole history.
- Newest first means ``created_at DESC, id DESC``.
- ``prune`` works in chunks of ``PRUNE_CHUNK`` rows, one short transaction each, so ingest is never blocked
  for long; a crash midway leaves a consistent, partly pruned store. Events are scanned in acceptance order
  and the scan stops at the first event inside the window, so after the wall clock stepped back a few events
  may outlive the window until a later prune.
- Callbacks live in their own table, inserted by ``record`` in the outcome's transaction and only while the
  delivery's lease matches (the same check as the attempt row), so a stale outcome stores no callback. Their
  ids come from AUTOINCREMENT (never reused); their lease tokens from the shared counter.
- The DDL and its migrations are in ``dispatcher/store/schema.py``; opening a file migrates it in place.
- Writers queue on a lock file beside the database (``<file>-wlock``, ``flock``) before they begin: with an
  ingest process (``dispatcher.ingest_process``) two processes write the file at once. SQLite's own busy
  handler sleeps and polls (1, 2, 5 ... 100 ms), so the engine's short transactions lost every race to
  ingest's back-to-back commits and delivery stopped while ingest ran; the lock file is polled every 0.2 ms,
  so a waiter takes its turn as soon as the holder is done. The file is the store's own: deleting it while
  no dispatcher runs is harmless.
- Memory: the page cache is bounded (``cache_size``) and no method loads more than one batch of rows, so a
  million pending deliveries cost disk, not RSS.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Any

from dispatcher.errors import StoreError
from dispatcher.store.base import (
    AttemptLog,
    Callback,
    CallbackDetail,
    CallbackLease,
    CallbackOutcome,
    Delivery,
    DeliveryDetail,
    DeliveryQuery,
    DeliveryStatus,
    EnqueueResult,
    Lease,
    NewEvent,
    Outcome,
    OutcomeKind,
)
from dispatcher.store.rows import (
    OPEN_WEBHOOKS,
    attempt_logs,
    attempt_logs_query,
    attempt_row,
    query_where,
    settlement,
)
from dispatcher.store.schema import (
    BASE_SCHEMA,
    CALLBACK_DUE_CONDITION,
    DUE_CONDITION,
    MIGRATIONS,
    SCHEMA_VERSION,
    statements,
)

PRUNE_CHUNK = 1000
_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
_WRITER_CACHE_KIB = 2000
_READER_CACHE_KIB = 2000

_DUE = DUE_CONDITION
_CALLBACK_DUE = CALLBACK_DUE_CONDITION

_DELIVERY_COLUMNS = (
    "d.id, e.uuid, e.type, d.webhook, d.status, d.attempts, d.created_at, d.updated_at, d.next_attempt_at,"
    " d.last_status_code, d.last_error, d.dead_reason"
)
_LEASE_DUE = (
    "SELECT d.id, e.uuid, e.type, d.webhook, e.body, d.attempts, d.created_at"
    " FROM deliveries AS d INDEXED BY deliveries_due JOIN events AS e ON e.id = d.event_id"
    f" WHERE d.{_DUE.replace(' AND ', ' AND d.')} AND d.next_attempt_at <= ?"
    " ORDER BY d.next_attempt_at, d.id LIMIT ?"
)
# Passing over skipped webhooks (those of full endpoints) is read on the reader connection, outside the write
# lock (ingest commits must not wait behind it); the write transaction then leases those rows still due.
# First the earliest due rows, at most _SKIP_SCAN_FACTOR x limit of them, filtered in Python: enough unless
# the skipped webhooks' backlog is in the way.
_SKIP_SCAN_FACTOR = 4
_DUE_HEAD = (
    f"SELECT id, webhook FROM deliveries INDEXED BY deliveries_due WHERE {_DUE} AND next_attempt_at <= ?"
    " ORDER BY next_attempt_at, id LIMIT ?"
)
# Then, instead of stepping over that backlog row by row (a million due rows of a dead endpoint), one seek per
# webhook in deliveries_due_webhook (schema v3): each webhook's first due row, in (next_attempt_at, id) order.
# The earliest `limit` due rows of the other webhooks all belong to the first `limit` webhooks so ordered.
_N_DUE = "n." + _DUE.replace(" AND ", " AND n.")
_DUE_WEBHOOKS_SKIPPING = (
    "WITH RECURSIVE firsts (webhook, due, id) AS ("
    " SELECT webhook, next_attempt_at, id FROM deliveries WHERE id = (SELECT n.id FROM deliveries AS n"
    f" INDEXED BY deliveries_due_webhook WHERE {_N_DUE} ORDER BY n.webhook, n.next_attempt_at, n.id LIMIT 1)"
    " UNION ALL SELECT d.webhook, d.next_attempt_at, d.id FROM firsts JOIN deliveries AS d ON d.id = ("
    f" SELECT n.id FROM deliveries AS n INDEXED BY deliveries_due_webhook WHERE {_N_DUE}"
    " AND n.webhook > firsts.webhook ORDER BY n.webhook, n.next_attempt_at, n.id LIMIT 1))"
    " SELECT webhook FROM firsts WHERE due <= ?1 AND webhook NOT IN (SELECT value FROM json_each(?2))"
    " ORDER BY due, id LIMIT ?3"
)
# Then each of those webhooks' first due rows, in index order (no sort): the j-th webhook (from 0) has at most
# limit - j rows among the answer, since each webhook before it has an earlier one.
_DUE_OF_WEBHOOK = (
    f"SELECT next_attempt_at, id FROM deliveries INDEXED BY deliveries_due_webhook WHERE {_DUE}"
    " AND webhook = ? AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?"
)
_LEASE_DUE_BY_ID = (
    "SELECT d.id, e.uuid, e.type, d.webhook, e.body, d.attempts, d.created_at"
    " FROM deliveries AS d NOT INDEXED JOIN events AS e ON e.id = d.event_id"  # by rowid: a few ids
    " WHERE d.id IN (SELECT value FROM json_each(?))"
    f" AND d.{_DUE.replace(' AND ', ' AND d.')} AND d.next_attempt_at <= ?"
    " ORDER BY d.next_attempt_at, d.id"
)
# One statement for the whole batch, not one per row (see _INSERT_DELIVERIES).
_LEASE_BY_ID = (
    "UPDATE deliveries SET lease_id = ?1, lease_expires_at = ?2 WHERE id IN (SELECT value FROM json_each(?3))"
)
_INSERT_EVENT = (
    "INSERT INTO events (id, uuid, type, created_at, body) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (uuid) DO NOTHING"
)
# A commit's events in one statement (see _insert_events): ?1 is a JSON array of [type, offset, length] of
# each body in ?3, ?2 the events' 16-byte keys end to end, ?4 the first id, ?5 now. WHERE true: an upsert's
# SELECT needs a WHERE, or SQLite reads ON as a join. coalesce: substr of an empty blob is NULL, not x''.
_EVENTS_STATEMENT_BYTES = 32 << 20
_INSERT_EVENTS = (
    "INSERT INTO events (id, uuid, type, created_at, body) SELECT ?4 + key, substr(?2, 16 * key + 1, 16),"
    " value ->> 0, ?5, coalesce(substr(?3, value ->> 1, value ->> 2), x'') FROM json_each(?1) WHERE true"
    " ON CONFLICT (uuid) DO NOTHING"
)
# A commit's deliveries in one statement, from one JSON array of [id, event_id, webhook, leased]: executemany
# steps once per row and gives the interpreter lock up and takes it back around every step, which under load
# (the worker threads, the reply readers) makes each row wait for its turn: an event routed to 9 webhooks paid
# it 9 times. ?2 is now, ?3 and ?4 the lease token and expiry of the rows with leased = 1.
_INSERT_DELIVERIES = (
    "INSERT INTO deliveries (id, event_id, webhook, next_attempt_at, lease_id, lease_expires_at, created_at,"
    " updated_at) SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),"
    " json_extract(value, '$[2]'), ?2, CASE WHEN json_extract(value, '$[3]') THEN ?3 END,"
    " CASE WHEN json_extract(value, '$[3]') THEN ?4 END, ?2, ?2 FROM json_each(?1)"
)
# SQLite's JSON functions end a string at an escaped NUL: a webhook name holding one (never one from a
# webhooks.d file, whose names are DNS labels) goes in row by row.
_INSERT_DELIVERY = (
    "INSERT INTO deliveries (id, event_id, webhook, next_attempt_at, lease_id, lease_expires_at, created_at,"
    " updated_at) VALUES (?1, ?2, ?3, ?5, CASE WHEN ?4 THEN ?6 END, CASE WHEN ?4 THEN ?7 END, ?5, ?5)"
)
# Inserted only while the lease still matches; numbered after existing rows (history kept on requeue).
_INSERT_ATTEMPT = (
    "INSERT INTO attempts (delivery_id, number, started_at, duration_seconds, status_code, error,"
    " response_headers, response_excerpt)"
    " SELECT d.id, (SELECT COALESCE(MAX(number), 0) + 1 FROM attempts WHERE delivery_id = d.id),"
    " ?, ?, ?, ?, ?, ? FROM deliveries AS d WHERE d.id = ? AND d.lease_id = ?"
)
_SETTLE = (
    "UPDATE deliveries SET status = ?1, attempts = attempts + ?2, next_attempt_at = ?3, dead_reason = ?4,"
    " last_status_code = IIF(?2, ?5, last_status_code), last_error = IIF(?2, ?6, last_error), held = 0,"
    " lease_id = NULL, lease_expires_at = NULL, updated_at = ?7 WHERE id = ?8 AND lease_id = ?9"
)
_GIVE_BACK = (
    "UPDATE deliveries SET held = ?1, next_attempt_at = COALESCE(?2, next_attempt_at), lease_id = NULL,"
    " lease_expires_at = NULL, updated_at = ?3 WHERE id = ?4 AND lease_id = ?5"
)
_REQUEUE = (
    "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?1, held = 0,"
    " dead_reason = NULL, updated_at = ?1"
)


# Inserted only while the delivery's lease still matches: the callback exists exactly when its outcome does.
_INSERT_CALLBACK = (
    "INSERT INTO callbacks (delivery_id, webhook, url, label, payload, next_attempt_at, created_at,"
    " updated_at) SELECT d.id, ?2, ?3, ?4, ?5, ?1, ?1, ?1 FROM deliveries AS d"
    " WHERE d.id = ?6 AND d.lease_id = ?7"
)
_CALLBACK_COLUMNS = (
    "id, webhook, delivery_id, label, status, attempts, created_at, updated_at, next_attempt_at,"
    " last_status_code, last_error, dead_reason"
)
_INSERT_CALLBACK_ATTEMPT = (
    "INSERT INTO callback_attempts (callback_id, number, started_at, duration_seconds, status_code, error,"
    " response_headers, response_excerpt)"
    " SELECT c.id, (SELECT COALESCE(MAX(number), 0) + 1 FROM callback_attempts WHERE callback_id = c.id),"
    " ?, ?, ?, ?, ?, ? FROM callbacks AS c WHERE c.id = ? AND c.lease_id = ?"
)
_SETTLE_CALLBACK = (
    "UPDATE callbacks SET status = ?1, attempts = attempts + ?2, next_attempt_at = ?3, dead_reason = ?4,"
    " last_status_code = IIF(?2, ?5, last_status_code), last_error = IIF(?2, ?6, last_error),"
    " lease_id = NULL, lease_expires_at = NULL, updated_at = ?7 WHERE id = ?8 AND lease_id = ?9"
)
_GIVE_BACK_CALLBACK = (
    "UPDATE callbacks SET next_attempt_at = ?1, lease_id = NULL, lease_expires_at = NULL, updated_at = ?2"
    " WHERE id = ?3 AND lease_id = ?4"
)
_REQUEUE_CALLBACK = (
    "UPDATE callbacks SET status = 'pending', attempts = 0, next_attempt_at = ?1, dead_reason = NULL,"
    " updated_at = ?1"
)


@contextmanager
def _translated(action: str, path: Path) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreError(f"store {action} failed ({path}): {exc}") from exc


def _delivery(row: Sequence[Any]) -> Delivery:
    return Delivery(
        id=row[0],
        event_uuid=_uuid_text(row[1]),
        event_type=row[2],
        webhook=row[3],
        status=DeliveryStatus(row[4]),
        attempts=row[5],
        created_at=row[6],
        updated_at=row[7],
        next_attempt_at=row[8],
        last_status_code=row[9],
        last_error=row[10],
        dead_reason=row[11],
    )


def _callback(row: Sequence[Any]) -> Callback:
    return Callback(
        id=row[0],
        webhook=row[1],
        delivery_id=row[2],
        label=row[3],
        status=DeliveryStatus(row[4]),
        attempts=row[5],
        created_at=row[6],
        updated_at=row[7],
        next_attempt_at=row[8],
        last_status_code=row[9],
        last_error=row[10],
        dead_reason=row[11],
    )


def _attempt_logs(conn: sqlite3.Connection, table: str, key_column: str, key: int) -> tuple[AttemptLog, ...]:
    return attempt_logs(conn.execute(attempt_logs_query(table, key_column, "?"), (key,)).fetchall())


def _uuid_key(uuid: str) -> bytes | str:
    """16 bytes for a normalised uuid: half the size of the hex text in the dedupe index, which is written
    at random places and is the main cost of an enqueue. Anything else stays text (never equal to a blob)."""
    if len(uuid) == 32:
        with suppress(ValueError):
            return bytes.fromhex(uuid)
    return uuid


def _uuid_text(key: bytes | str) -> str:
    return key.hex() if isinstance(key, bytes) else key


_QUEUE_STEP_SECONDS = 0.0002


def _open_write_queue(path: Path) -> int | None:
    """The lock file writers queue on (see the module's notes); None where it cannot be created (a
    read-only directory: SQLite's busy handler still serialises writers)."""
    try:
        return os.open(f"{path}-wlock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return None


@contextmanager
def _queued(fd: int | None, timeout_seconds: float) -> Iterator[None]:
    """Hold the writers' lock file for one transaction. Waited for in steps of 0.2 ms (a waiter takes its
    turn as soon as the holder is done), at most ``timeout_seconds``: past that, the transaction goes on
    without it and SQLite's busy timeout decides (a writer stuck mid-transaction is an error, not a hang)."""
    held = False
    if fd is not None:
        deadline = time.monotonic() + timeout_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(_QUEUE_STEP_SECONDS)
    try:
        yield
    finally:
        if held and fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)


def _insert_events(conn: sqlite3.Connection, first_id: int, events: Sequence[NewEvent], now: float) -> int:
    """Insert ``events`` with ids from ``first_id`` (a duplicate uuid is skipped); how many went in.

    One statement per up to ``_EVENTS_STATEMENT_BYTES`` of bodies (``_INSERT_EVENTS``), not ``executemany``:
    that gives the interpreter lock up and waits to take it back for every row, and in the ingest process the
    reading thread holds it meanwhile (the events' insert was most of the committer's time). The bound keeps
    the joined bodies far below SQLite's limit on one value (1 GB; a batch may hold 5,000 lines of 1 MiB): a
    statement holds one body more only when that body alone is larger. A batch goes in row by row, as before,
    when an event has a key that is not 16 bytes (its key would shift the others') or a type that is not
    ASCII without NUL (the protocol's types always are; SQLite's JSON functions cut a NUL short and would
    store a lone surrogate as invalid UTF-8, where the row-by-row insert refuses it)."""
    keys = [_uuid_key(e.uuid) for e in events]
    blobs = [k for k in keys if isinstance(k, bytes) and len(k) == 16]
    if len(blobs) < len(keys) or not all(e.type.isascii() and "\0" not in e.type for e in events):
        rows = [
            (first_id + i, k, e.type, now, e.body) for i, (k, e) in enumerate(zip(keys, events, strict=True))
        ]
        return int(conn.executemany(_INSERT_EVENT, rows).rowcount)
    inserted = 0
    start = 0
    while start < len(events):
        meta: list[tuple[str, int, int]] = []
        size = 0
        end = start
        while end < len(events) and (end == start or size + len(events[end].body) <= _EVENTS_STATEMENT_BYTES):
            meta.append((events[end].type, size + 1, len(events[end].body)))  # substr counts from 1
            size += len(events[end].body)
            end += 1
        bodies = b"".join(e.body for e in events[start:end])
        params = (json.dumps(meta), b"".join(blobs[start:end]), bodies, first_id + start, now)
        inserted += conn.execute(_INSERT_EVENTS, params).rowcount
        start = end
    return inserted


def _json_list(values: Sequence[object]) -> str:
    return json.dumps(list(values))


class SQLiteStore:
    """``Store`` in one SQLite file. Thread-safe: one writer connection and one reader connection, each
    behind a lock; other processes (``dispatch deliveries``) may open the same file at the same time."""

    def __init__(
        self, path: str | Path, *, synchronous: str = "FULL", busy_timeout_seconds: float = 5.0
    ) -> None:
        if synchronous.upper() not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(_SYNCHRONOUS)}, not {synchronous!r}")
        self.path = Path(path)
        if self.path.is_dir():
            raise StoreError(f"cannot open store {self.path}: it is a directory, expected a database file")
        if not self.path.parent.is_dir():
            raise StoreError(f"cannot open store {self.path}: directory {self.path.parent} does not exist")
        self._busy_ms = int(busy_timeout_seconds * 1000)
        self._durable_level = synchronous.upper()
        # Transactions that only record what happened to leased work (outcomes, leases, reclaims) need not
        # survive a power loss: lost, their deliveries are attempted again (at-least-once). In WAL mode,
        # NORMAL is still durable against a crash of this process (kill -9); an fsync by the next FULL commit
        # (enqueue, whose ack promises durability) persists them too. Never above the configured level.
        self._light_level = "NORMAL" if _SYNCHRONOUS.index(self._durable_level) > 1 else self._durable_level
        self._level = self._durable_level
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._queue_fd = _open_write_queue(self.path)
        try:
            self._writer = self._connect(synchronous.upper(), _WRITER_CACHE_KIB, writer=True)
        except BaseException:
            self._close_queue()
            raise
        try:
            self._create_schema()
            self._reader = self._connect(synchronous.upper(), _READER_CACHE_KIB, writer=False)
        except BaseException:
            self._writer.close()
            self._close_queue()
            raise

    def _close_queue(self) -> None:
        if self._queue_fd is not None:
            os.close(self._queue_fd)
            self._queue_fd = None

    def _connect(self, synchronous: str, cache_kib: int, *, writer: bool) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, timeout=self._busy_ms / 1000, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            if writer:
                # WAL is persistent in the file; asking again while another process has it open is a no-op.
                (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
                if mode != "wal":
                    raise StoreError(f"cannot open store {self.path}: WAL mode refused (journal mode {mode})")
            conn.execute(f"PRAGMA synchronous = {synchronous}")
            conn.execute(f"PRAGMA cache_size = -{cache_kib}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA journal_size_limit = 67108864")  # truncate the WAL back after checkpoints
            if not writer:
                conn.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            conn.close()
            if exc.sqlite_errorname in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
                raise StoreError(f"cannot open store {self.path}: not a SQLite database or corrupt") from exc
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _create_schema(self) -> None:
        """Create a new store, or migrate an older one in place; refuse one newer than this code."""
        with _translated("schema check", self.path):
            (version,) = self._writer.execute("PRAGMA user_version").fetchone()
            if version < SCHEMA_VERSION:
                # Re-checked under the write lock: two processes may open the file at the same moment.
                with self._write("schema migration") as conn:
                    (version,) = conn.execute("PRAGMA user_version").fetchone()
                    if version == 0:
                        (tables,) = conn.execute("SELECT COUNT(*) FROM sqlite_schema").fetchone()
                        if tables:
                            raise StoreError(
                                f"cannot open store {self.path}: a SQLite file of something else"
                            )
                        for statement in statements(BASE_SCHEMA):
                            conn.execute(statement)
                        version = 1
                    if 0 < version < SCHEMA_VERSION:
                        for script in MIGRATIONS[version - 1 :]:
                            for statement in statements(script):
                                conn.execute(statement)
                        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                        version = SCHEMA_VERSION
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"cannot open store {self.path}: schema version {version} was written by a newer "
                    f"dispatcher (this one knows up to {SCHEMA_VERSION}); upgrade it or use another --state"
                )
            if version != SCHEMA_VERSION:
                raise StoreError(f"cannot open store {self.path}: schema version {version} is unknown")

    @contextmanager
    def _write(self, action: str, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front (IMMEDIATE) so it never fails half-way on a lock upgrade.

        ``durable=False``: committed without waiting for the disk (see ``_light_level``)."""
        with self._write_lock, _translated(action, self.path), _queued(self._queue_fd, self._busy_ms / 1000):
            conn = self._writer
            level = self._durable_level if durable else self._light_level
            if level != self._level:
                conn.execute(f"PRAGMA synchronous = {level}")
                self._level = level
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise

    @contextmanager
    def _read(self, action: str) -> Iterator[sqlite3.Connection]:
        """One read transaction on the reader connection: a consistent snapshot that never blocks writers."""
        with self._read_lock, _translated(action, self.path):
            conn = self._reader
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                with suppress(sqlite3.Error):
                    conn.execute("COMMIT")

    @staticmethod
    def _counters(conn: sqlite3.Connection) -> tuple[int, int, int]:
        row = conn.execute("SELECT next_event_id, next_delivery_id, next_lease_id FROM counters").fetchone()
        return int(row[0]), int(row[1]), int(row[2])

    def enqueue(
        self,
        events: Sequence[NewEvent],
        now: float,
        lease_seconds: float | None = None,
        unleased: Collection[str] = (),
    ) -> list[EnqueueResult]:
        first_of: dict[str, NewEvent] = {}
        for event in events:
            first_of.setdefault(event.uuid, event)  # a later copy in the same batch is a duplicate
        unique = list(first_of.values())
        if not unique:
            return []
        ids: dict[str, tuple[int, ...]] = {}
        leases: dict[str, list[Lease]] = {}  # the deliveries created leased, per event, in webhook order
        with self._write("enqueue") as conn:
            first_event, delivery_id, token = self._counters(conn)
            # The common case has no duplicates: insert blindly, look at what was skipped only when needed.
            kept: set[int] | None = None
            if _insert_events(conn, first_event, unique, now) < len(unique):
                end = first_event + len(unique)
                kept = {
                    r[0]
                    for r in conn.execute(
                        "SELECT id FROM events WHERE id >= ? AND id < ?", (first_event, end)
                    )
                }
            expires_at = None if lease_seconds is None else now + lease_seconds
            lease_id = None if lease_seconds is None else token
            delivery_rows: list[tuple[int, int, str, int]] = []
            for event_id, event in enumerate(unique, start=first_event):
                if kept is not None and event_id not in kept:
                    continue
                webhooks = tuple(dict.fromkeys(event.webhooks))  # one delivery per (event, webhook)
                ids[event.uuid] = tuple(range(delivery_id, delivery_id + len(webhooks)))
                created = leases[event.uuid] = []
                for webhook in webhooks:
                    leased = lease_id is not None and expires_at is not None and webhook not in unleased
                    if lease_id is not None and expires_at is not None and leased:
                        lease = Lease(delivery_id, lease_id, expires_at, event.uuid, event.type, webhook,
                                      event.body, 0, now)  # fmt: skip
                        created.append(lease)
                    delivery_rows.append((delivery_id, event_id, webhook, int(leased)))
                    delivery_id += 1
            if any("\0" in name for name in {row[2] for row in delivery_rows}):
                conn.executemany(_INSERT_DELIVERY, [(*r, now, lease_id, expires_at) for r in delivery_rows])
            elif delivery_rows:
                conn.execute(_INSERT_DELIVERIES, (_json_list(delivery_rows), now, lease_id, expires_at))
            conn.execute(
                "UPDATE counters SET next_event_id = ?, next_delivery_id = ?, next_lease_id = ?",
                (first_event + len(unique), delivery_id, token + (lease_id is not None)),
            )
        return [
            EnqueueResult(e.uuid, False, ids.pop(e.uuid), tuple(leases.pop(e.uuid)))
            if e.uuid in ids
            else EnqueueResult(e.uuid, duplicate=True)
            for e in events
        ]

    def lease(self, now: float, limit: int, lease_seconds: float, skip: Collection[str] = ()) -> list[Lease]:
        if limit <= 0:
            return []
        candidates: list[int] = []
        if skip:
            with self._read("lease") as conn:
                candidates = self._due_ids_skipping(conn, now, limit, skip)
            if not candidates:
                return []
        with self._write("lease", durable=False) as conn:
            if skip:
                rows = conn.execute(_LEASE_DUE_BY_ID, (_json_list(candidates), now)).fetchall()
            else:
                rows = conn.execute(_LEASE_DUE, (now, limit)).fetchall()
            if not rows:
                return []
            _, _, token = self._counters(conn)
            conn.execute("UPDATE counters SET next_lease_id = ?", (token + 1,))
            expires_at = now + lease_seconds
            conn.execute(_LEASE_BY_ID, (token, expires_at, _json_list([row[0] for row in rows])))
        return [Lease(row[0], token, expires_at, _uuid_text(row[1]), *row[2:]) for row in rows]

    @staticmethod
    def _due_ids_skipping(
        conn: sqlite3.Connection, now: float, limit: int, skip: Collection[str]
    ) -> list[int]:
        """The ids of the first ``limit`` due deliveries, in due order, of the webhooks not in ``skip``."""
        scan = _SKIP_SCAN_FACTOR * limit
        head = conn.execute(_DUE_HEAD, (now, scan)).fetchall()
        skipped = set(skip)
        ids = [delivery_id for delivery_id, webhook in head if webhook not in skipped][:limit]
        if len(ids) == limit or len(head) < scan:
            return ids  # the whole answer: nothing due lies beyond what was read
        names = [r[0] for r in conn.execute(_DUE_WEBHOOKS_SKIPPING, (now, _json_list(sorted(skip)), limit))]
        due: list[tuple[float, int]] = []
        for rank, name in enumerate(names):
            due.extend(conn.execute(_DUE_OF_WEBHOOK, (name, now, limit - rank)))
        return [delivery_id for _, delivery_id in sorted(due)[:limit]]

    def record(self, outcomes: Sequence[Outcome], now: float) -> int:
        first: dict[tuple[int, int], Outcome] = {}
        for outcome in outcomes:  # a second outcome for one lease could only be stale: the first clears it
            first.setdefault((outcome.delivery_id, outcome.lease_id), outcome)
        attempt_rows: list[tuple[object, ...]] = []
        settle_rows: list[tuple[object, ...]] = []
        give_back_rows: list[tuple[object, ...]] = []
        callback_rows: list[tuple[object, ...]] = []
        for o in first.values():
            if o.callback is not None and o.kind not in (OutcomeKind.HOLD, OutcomeKind.RELEASE):
                c = o.callback
                callback_rows.append((now, c.webhook, c.url, c.label, c.payload, o.delivery_id, o.lease_id))
            if o.kind is OutcomeKind.HOLD:  # parked until release_held; its due time does not matter
                give_back_rows.append((1, o.next_attempt_at, now, o.delivery_id, o.lease_id))
                continue
            if o.kind is OutcomeKind.RELEASE:
                due = now if o.next_attempt_at is None else o.next_attempt_at
                give_back_rows.append((0, due, now, o.delivery_id, o.lease_id))
                continue
            a = o.attempt
            key = (o.delivery_id, o.lease_id)
            if a is not None:
                attempt_rows.append((*attempt_row(a), *key))
            status, retry_at, reason = settlement(o.kind, o.next_attempt_at, o.reason, now)
            code, error = (None, None) if a is None else (a.status_code, a.error)
            settle_rows.append((status, int(a is not None), retry_at, reason, code, error, now, *key))
        if not first:
            return 0
        with self._write("record", durable=False) as conn:
            if attempt_rows:  # before the updates: they clear the lease this insert checks
                conn.executemany(_INSERT_ATTEMPT, attempt_rows)
            if callback_rows:  # likewise
                conn.executemany(_INSERT_CALLBACK, callback_rows)
            applied = conn.executemany(_SETTLE, settle_rows).rowcount if settle_rows else 0
            if give_back_rows:
                applied += conn.executemany(_GIVE_BACK, give_back_rows).rowcount
        return applied

    def reclaim_expired(self, now: float) -> int:
        with self._write("reclaim", durable=False) as conn:
            return sum(
                conn.execute(
                    f"UPDATE {table} SET lease_id = NULL, lease_expires_at = NULL"
                    " WHERE lease_id IS NOT NULL AND lease_expires_at <= ?",
                    (now,),
                ).rowcount
                for table in ("deliveries", "callbacks")
            )

    def lease_callbacks(self, now: float, limit: int, lease_seconds: float) -> list[CallbackLease]:
        if limit <= 0:
            return []
        with self._write("lease_callbacks", durable=False) as conn:
            rows = conn.execute(
                "SELECT id, webhook, url, payload, attempts, created_at"
                f" FROM callbacks INDEXED BY callbacks_due WHERE {_CALLBACK_DUE} AND next_attempt_at <= ?"
                " ORDER BY next_attempt_at, id LIMIT ?",
                (now, limit),
            ).fetchall()
            if not rows:
                return []
            _, _, token = self._counters(conn)
            conn.execute("UPDATE counters SET next_lease_id = ?", (token + 1,))
            expires_at = now + lease_seconds
            conn.executemany(
                "UPDATE callbacks SET lease_id = ?, lease_expires_at = ? WHERE id = ?",
                [(token, expires_at, row[0]) for row in rows],
            )
        return [
            CallbackLease(row[0], token, expires_at, row[1], row[2], bytes(row[3]), row[4], row[5])
            for row in rows
        ]

    def record_callbacks(self, outcomes: Sequence[CallbackOutcome], now: float) -> int:
        first: dict[tuple[int, int], CallbackOutcome] = {}
        for outcome in outcomes:
            first.setdefault((outcome.callback_id, outcome.lease_id), outcome)
        if not first:
            return 0
        attempt_rows: list[tuple[object, ...]] = []
        settle_rows: list[tuple[object, ...]] = []
        give_back_rows: list[tuple[object, ...]] = []
        for o in first.values():
            key = (o.callback_id, o.lease_id)
            if o.kind in (OutcomeKind.RELEASE, OutcomeKind.HOLD):
                give_back_rows.append((now if o.next_attempt_at is None else o.next_attempt_at, now, *key))
                continue
            a = o.attempt
            if a is not None:
                attempt_rows.append((*attempt_row(a), *key))
            status, retry_at, reason = settlement(o.kind, o.next_attempt_at, o.reason, now)
            code, error = (None, None) if a is None else (a.status_code, a.error)
            settle_rows.append((status, int(a is not None), retry_at, reason, code, error, now, *key))
        with self._write("record_callbacks", durable=False) as conn:
            if attempt_rows:
                conn.executemany(_INSERT_CALLBACK_ATTEMPT, attempt_rows)
            applied = conn.executemany(_SETTLE_CALLBACK, settle_rows).rowcount if settle_rows else 0
            if give_back_rows:
                applied += conn.executemany(_GIVE_BACK_CALLBACK, give_back_rows).rowcount
        return applied

    def next_callback_due_at(self) -> float | None:
        with self._read("next_callback_due_at") as conn:
            row = conn.execute(
                f"SELECT next_attempt_at FROM callbacks INDEXED BY callbacks_due WHERE {_CALLBACK_DUE}"
                " ORDER BY next_attempt_at LIMIT 1"
            ).fetchone()
        return None if row is None else float(row[0])

    def list_callbacks(self, query: DeliveryQuery) -> list[Callback]:
        where, params = query_where(query, "", "delivery_id", "?")
        sql = f"SELECT {_CALLBACK_COLUMNS} FROM callbacks{where} ORDER BY created_at DESC, id DESC LIMIT ?"
        with self._read("list_callbacks") as conn:
            rows = conn.execute(sql, (*params, max(query.limit, 0))).fetchall()
        return [_callback(row) for row in rows]

    def get_callback(self, callback_id: int) -> CallbackDetail | None:
        with self._read("show_callback") as conn:
            row = conn.execute(
                f"SELECT {_CALLBACK_COLUMNS}, payload FROM callbacks WHERE id = ?", (callback_id,)
            ).fetchone()
            if row is None:
                return None
            logs = _attempt_logs(conn, "callback_attempts", "callback_id", callback_id)
        return CallbackDetail(_callback(row), bytes(row[12]), logs)

    def requeue_callbacks(self, callback_ids: Sequence[int], now: float) -> int:
        if not callback_ids:
            return 0
        with self._write("requeue_callbacks") as conn:
            return conn.execute(
                f"{_REQUEUE_CALLBACK} WHERE id IN (SELECT value FROM json_each(?2))"
                " AND status != 'delivered' AND lease_id IS NULL",
                (now, _json_list(list(dict.fromkeys(callback_ids)))),
            ).rowcount

    def requeue_dead_callbacks(
        self, now: float, webhook: str | None = None, since: float | None = None
    ) -> int:
        with self._write("requeue_callbacks") as conn:
            return conn.execute(
                f"{_REQUEUE_CALLBACK} WHERE status = 'dead' AND lease_id IS NULL"
                " AND (?2 IS NULL OR webhook = ?2) AND (?3 IS NULL OR created_at >= ?3)",
                (now, webhook, since),
            ).rowcount

    def next_due_at(self) -> float | None:
        with self._read("next_due_at") as conn:
            row = conn.execute(
                f"SELECT next_attempt_at FROM deliveries INDEXED BY deliveries_due WHERE {_DUE}"
                " ORDER BY next_attempt_at LIMIT 1"
            ).fetchone()
        return None if row is None else float(row[0])

    def requeue(self, delivery_ids: Sequence[int], now: float) -> int:
        if not delivery_ids:
            return 0
        with self._write("requeue") as conn:
            return conn.execute(
                f"{_REQUEUE} WHERE id IN (SELECT value FROM json_each(?2))"
                " AND status != 'delivered' AND lease_id IS NULL",
                (now, _json_list(list(dict.fromkeys(delivery_ids)))),
            ).rowcount

    def requeue_dead(self, now: float, webhook: str | None = None, since: float | None = None) -> int:
        with self._write("requeue") as conn:
            return conn.execute(
                f"{_REQUEUE} WHERE status = 'dead' AND lease_id IS NULL AND (?2 IS NULL OR webhook = ?2)"
                " AND (?3 IS NULL OR created_at >= ?3)",
                (now, webhook, since),
            ).rowcount

    def release_held(self, webhook: str, now: float) -> int:
        with self._write("release_held") as conn:
            return conn.execute(
                "UPDATE deliveries SET held = 0, next_attempt_at = ?1, updated_at = ?1"
                " WHERE webhook = ?2 AND status IN ('pending', 'failed') AND held = 1 AND lease_id IS NULL",
                (now, webhook),
            ).rowcount

    def bury_webhook(self, webhook: str, reason: str, now: float) -> int:
        with self._write("bury_webhook") as conn:
            return conn.execute(
                "UPDATE deliveries SET status = 'dead', dead_reason = ?1, held = 0, next_attempt_at = NULL,"
                " updated_at = ?2 WHERE webhook = ?3 AND status IN ('pending', 'failed')"
                " AND lease_id IS NULL",
                (reason, now, webhook),
            ).rowcount

    def open_webhooks(self) -> set[str]:
        # A skip scan over the webhook index: one seek per distinct name instead of reading every delivery.
        with self._read("open_webhooks") as conn:
            rows = conn.execute(OPEN_WEBHOOKS).fetchall()
        return {row[0] for row in rows}

    def list_deliveries(self, query: DeliveryQuery) -> list[Delivery]:
        where, params = query_where(query, "d.", "d.id", "?")
        sql = (
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries AS d JOIN events AS e ON e.id = d.event_id{where}"
            " ORDER BY d.created_at DESC, d.id DESC LIMIT ?"
        )
        with self._read("list") as conn:
            rows = conn.execute(sql, (*params, max(query.limit, 0))).fetchall()
        return [_delivery(row) for row in rows]

    def get_delivery(self, delivery_id: int) -> DeliveryDetail | None:
        with self._read("show") as conn:
            row = conn.execute(
                f"SELECT {_DELIVERY_COLUMNS}, e.body"
                " FROM deliveries AS d JOIN events AS e ON e.id = d.event_id WHERE d.id = ?",
                (delivery_id,),
            ).fetchone()
            if row is None:
                return None
            logs = _attempt_logs(conn, "attempts", "delivery_id", delivery_id)
        return DeliveryDetail(_delivery(row), bytes(row[12]), logs)

    def counts(self) -> dict[DeliveryStatus, int]:
        result = dict.fromkeys(DeliveryStatus, 0)
        with self._read("counts") as conn:
            for status, count in conn.execute("SELECT status, COUNT(*) FROM deliveries GROUP BY status"):
                result[DeliveryStatus(status)] = count
        return result

    def oldest_open_created_at(self) -> float | None:
        # One index seek per open status (aggregate MIN skips the NULL of a status without deliveries).
        with self._read("oldest_open_created_at") as conn:
            (oldest,) = conn.execute(
                "SELECT MIN(m) FROM (SELECT MIN(created_at) AS m FROM deliveries WHERE status = 'pending'"
                " UNION ALL SELECT MIN(created_at) FROM deliveries WHERE status = 'failed')"
            ).fetchone()
        return None if oldest is None else float(oldest)

    def prune(self, now: float, delivered_older_than_seconds: float) -> int:
        cutoff = now - delivered_older_than_seconds
        removed = 0
        while True:
            # created_at <= updated_at, so the created_at bound only narrows the index range.
            with self._write("prune") as conn:
                ids = [
                    row[0]
                    for row in conn.execute(
                        "SELECT id FROM deliveries WHERE status = 'delivered' AND created_at < ?1"
                        " AND updated_at < ?1 LIMIT ?2",
                        (cutoff, PRUNE_CHUNK),
                    )
                ]
                if ids:
                    param = _json_list(ids)
                    conn.execute(
                        "DELETE FROM attempts WHERE delivery_id IN (SELECT value FROM json_each(?))", (param,)
                    )
                    conn.execute(
                        "DELETE FROM deliveries WHERE id IN (SELECT value FROM json_each(?))", (param,)
                    )
            removed += len(ids)
            if len(ids) < PRUNE_CHUNK:
                break
        while True:
            with self._write("prune") as conn:
                ids = [
                    row[0]
                    for row in conn.execute(
                        "SELECT id FROM callbacks WHERE status = 'delivered' AND updated_at < ? LIMIT ?",
                        (cutoff, PRUNE_CHUNK),
                    )
                ]
                if ids:
                    param = _json_list(ids)
                    conn.execute(
                        "DELETE FROM callback_attempts WHERE callback_id IN (SELECT value FROM json_each(?))",
                        (param,),
                    )
                    conn.execute(
                        "DELETE FROM callbacks WHERE id IN (SELECT value FROM json_each(?))", (param,)
                    )
            if len(ids) < PRUNE_CHUNK:
                break
        after = 0
        while True:
            with self._write("prune") as conn:
                rows = conn.execute(
                    "SELECT id, created_at FROM events WHERE id > ? ORDER BY id LIMIT ?", (after, PRUNE_CHUNK)
                ).fetchall()
                old = [event_id for event_id, created_at in rows if created_at < cutoff]
                conn.execute(
                    "DELETE FROM events WHERE id IN (SELECT value FROM json_each(?))"
                    " AND NOT EXISTS (SELECT 1 FROM deliveries WHERE event_id = events.id)",
                    (_json_list(old),),
                )
            if len(old) < len(rows) or len(rows) < PRUNE_CHUNK:
                break
            after = rows[-1][0]
        return removed

    def close(self) -> None:
        with self._write_lock, self._read_lock:
            self._reader.close()
            self._writer.close()
            self._close_queue()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
