"""The PostgreSQL backend: one store shared by several dispatchers, on one machine or many.

Decisions worth knowing:

- Every method is one short transaction on a pooled connection: lease, commit; HTTP outside any
  transaction; record, commit. Due work is taken with ``FOR UPDATE SKIP LOCKED``, so dispatchers leasing at
  the same instant never wait for one another's rows and never get the same delivery.
- The lease token (``lease_id``) comes from one sequence: strictly increasing across every dispatcher, so
  an outcome from a holder whose lease expired and was re-leased (a dead or stalled dispatcher) matches no
  row and is ignored. That is the fencing token.
- Clocks. The contract passes ``now`` from the caller. Lease *expiry* is kept on the database's clock: the
  store measures the offset between the caller's clock (``clock``, ``time.time`` by default) and the
  database's ``clock_timestamp()`` when it opens and every minute, stores ``now + offset + lease_seconds``
  and reclaims rows whose expiry is at most ``now + offset``. Two dispatchers whose clocks disagree by
  minutes therefore agree on when a lease ends, and a skewed machine cannot steal live leases. Due times,
  creation and update times stay in the caller's clock (as shown by ``deliveries list``): a skewed machine
  attempts a retry early or late by its skew, never twice. ``Lease.expires_at`` is in the caller's clock.
- Acknowledgement. ``enqueue`` commits with ``synchronous_commit`` as configured on the server (``on`` by
  default: the WAL is flushed, and with a synchronous standby, received by it) before it returns, and
  ingest acks only after it returns. Leases, outcomes and reclaims commit with ``synchronous_commit = off``:
  lost in a server crash, their deliveries are attempted again (at-least-once), as with SQLite's NORMAL.
- The per-endpoint limit across dispatchers (``share_limits``): leasing then runs under one transaction-
  scoped advisory lock, counts the live leases of each endpoint (those of every dispatcher) and takes
  only what keeps each endpoint at ``per_endpoint`` leases, or at one while ``endpoint_health`` says its
  last attempt failed or it has never answered. New deliveries are then created unleased and found by a
  lease (a wake-up by NOTIFY), so the limit has no side door.
- Wake-ups: a transaction that makes work due (enqueue, requeue, a retry or release, a reclaim, a freed
  slot) sends ``NOTIFY dispatch_work``; every dispatcher LISTENs and looks at the store at once.
- Counts come from ``delivery_counts`` (trigger-maintained, sharded): no ``count(*)`` over millions.
- ``prune`` deletes in chunks of ``PRUNE_CHUNK`` rows, one transaction each.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from types import TracebackType
from typing import Any

import psycopg

from dispatcher.errors import StoreError
from dispatcher.store.base import (
    AttemptLog,
    AttemptRecord,
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
from dispatcher.store.pgconn import CHANNEL, Listener, Pool, clock_offset
from dispatcher.store.pgschema import CALLBACK_DUE, DUE, MIGRATION_LOCK, MIGRATIONS, SCHEMA_VERSION
from dispatcher.store.rows import (
    OPEN_WEBHOOKS,
    attempt_logs,
    attempt_logs_query,
    attempt_row,
    query_where,
    settlement,
)

Conn = psycopg.Connection[Any]

PRUNE_CHUNK = 1000
#: The advisory lock that serialises leasing when the per-endpoint limit is shared.
LEASE_LOCK = MIGRATION_LOCK + 1
_OFFSET_REFRESH_SECONDS = 60.0
_LIMITED_ROUNDS = 8
_CANDIDATES = 100  # due rows looked at per round of a limited lease

_DELIVERY_COLUMNS = (
    "d.id, e.uuid, e.type, d.webhook, d.status, d.attempts, d.created_at, d.updated_at, d.next_attempt_at,"
    " d.last_status_code, d.last_error, d.dead_reason"
)
_CALLBACK_COLUMNS = (
    "id, webhook, delivery_id, label, status, attempts, created_at, updated_at, next_attempt_at,"
    " last_status_code, last_error, dead_reason"
)
_LEASE_RETURNING = (
    "RETURNING d.id, e.uuid, e.type, d.webhook, e.body, d.attempts, d.created_at, d.next_attempt_at"
)
_LEASE_DUE = (
    f"WITH due AS (SELECT id FROM deliveries WHERE {DUE} AND next_attempt_at <= %(now)s"
    " AND webhook <> ALL(%(skip)s::text[]) ORDER BY next_attempt_at, id LIMIT %(limit)s"
    " FOR UPDATE SKIP LOCKED)"
    " UPDATE deliveries AS d SET lease_id = %(token)s, lease_expires_at = %(expires)s, holder = %(holder)s"
    f" FROM due, events AS e WHERE d.id = due.id AND e.id = d.event_id {_LEASE_RETURNING}"
)
# Under the lease lock no other dispatcher leases: candidates are read without row locks (locking hundreds
# of rows to take the few that fit the limits writes every one of them), and the UPDATE re-checks each
# chosen row's due condition on its latest version (a requeue or bury meanwhile wins).
_DUE_CANDIDATES = (
    f"SELECT id, webhook FROM deliveries WHERE {DUE} AND next_attempt_at <= %(now)s"
    " AND webhook <> ALL(%(skip)s::text[]) AND id <> ALL(%(taken)s::bigint[])"
    " ORDER BY next_attempt_at, id LIMIT %(limit)s"
)
_LEASE_IDS = (
    "UPDATE deliveries AS d SET lease_id = %(token)s, lease_expires_at = %(expires)s, holder = %(holder)s"
    " FROM events AS e WHERE d.id = ANY(%(ids)s::bigint[]) AND d.status IN ('pending', 'failed')"
    f" AND NOT d.held AND d.lease_id IS NULL AND e.id = d.event_id {_LEASE_RETURNING}"
)
_INSERT_EVENTS = (
    "INSERT INTO events (uuid, type, created_at, body)"
    " SELECT u, t, %(now)s, b FROM unnest(%(uuids)s::text[], %(types)s::text[], %(bodies)s::bytea[])"
    " AS x(u, t, b) ORDER BY u ON CONFLICT (uuid) DO NOTHING RETURNING id, uuid"
)
_INSERT_DELIVERIES = (
    "INSERT INTO deliveries (event_id, webhook, next_attempt_at, lease_id, lease_expires_at, holder,"
    " created_at, updated_at)"
    " SELECT x.e, x.w, %(now)s, CASE WHEN x.l THEN %(token)s::bigint END,"
    " CASE WHEN x.l THEN %(expires)s::float8 END, CASE WHEN x.l THEN %(holder)s::text END, %(now)s, %(now)s"
    " FROM unnest(%(events)s::bigint[], %(webhooks)s::text[], %(leased)s::bool[]) WITH ORDINALITY"
    " AS x(e, w, l, n) ORDER BY x.n RETURNING id, event_id, webhook"
)
_INSERT_ATTEMPT = (
    "INSERT INTO attempts (delivery_id, number, started_at, duration_seconds, status_code, error,"
    " response_headers, response_excerpt)"
    " SELECT d.id, (SELECT COALESCE(MAX(number), 0) + 1 FROM attempts WHERE delivery_id = d.id),"
    " %s, %s, %s, %s, %s, %s FROM deliveries AS d WHERE d.id = %s AND d.lease_id = %s"
)
_INSERT_CALLBACK = (
    "INSERT INTO callbacks (delivery_id, webhook, url, label, payload, next_attempt_at, created_at,"
    " updated_at) SELECT d.id, %(webhook)s, %(url)s, %(label)s, %(payload)s, %(now)s, %(now)s, %(now)s"
    " FROM deliveries AS d WHERE d.id = %(id)s AND d.lease_id = %(lease)s"
)
_SETTLE = (
    "UPDATE {table} SET status = %(status)s, attempts = attempts + %(tried)s,"
    " next_attempt_at = %(retry_at)s::float8, dead_reason = %(reason)s::text,"
    " last_status_code = CASE WHEN %(tried)s > 0 THEN %(code)s::int ELSE last_status_code END,"
    " last_error = CASE WHEN %(tried)s > 0 THEN %(error)s::text ELSE last_error END,{extra}"
    " lease_id = NULL, lease_expires_at = NULL, updated_at = %(now)s"
    " WHERE id = %(id)s AND lease_id = %(lease)s"
)
_GIVE_BACK = (
    "UPDATE deliveries SET held = %(held)s, next_attempt_at = COALESCE(%(due)s::float8, next_attempt_at),"
    " lease_id = NULL, lease_expires_at = NULL, holder = NULL, updated_at = %(now)s"
    " WHERE id = %(id)s AND lease_id = %(lease)s"
)
_INSERT_CALLBACK_ATTEMPT = (
    "INSERT INTO callback_attempts (callback_id, number, started_at, duration_seconds, status_code, error,"
    " response_headers, response_excerpt)"
    " SELECT c.id, (SELECT COALESCE(MAX(number), 0) + 1 FROM callback_attempts WHERE callback_id = c.id),"
    " %s, %s, %s, %s, %s, %s FROM callbacks AS c WHERE c.id = %s AND c.lease_id = %s"
)
_GIVE_BACK_CALLBACK = (
    "UPDATE callbacks SET next_attempt_at = %(due)s, lease_id = NULL, lease_expires_at = NULL,"
    " updated_at = %(now)s WHERE id = %(id)s AND lease_id = %(lease)s"
)
_REQUEUE = (
    "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = %(now)s, held = FALSE,"
    " dead_reason = NULL, updated_at = %(now)s"
)
_REQUEUE_CALLBACK = (
    "UPDATE callbacks SET status = 'pending', attempts = 0, next_attempt_at = %(now)s, dead_reason = NULL,"
    " updated_at = %(now)s"
)
_NOTIFY = f"SELECT pg_notify('{CHANNEL}', '')"


def _delivery(row: Sequence[Any]) -> Delivery:
    return Delivery(row[0], row[1], row[2], row[3], DeliveryStatus(row[4]), *row[5:12])


def _callback(row: Sequence[Any]) -> Callback:
    return Callback(row[0], row[1], row[2], row[3], DeliveryStatus(row[4]), *row[5:12])


def _settle_row(
    key: Mapping[str, object],
    kind: OutcomeKind,
    a: AttemptRecord | None,
    next_attempt_at: float | None,
    reason: str | None,
    now: float,
) -> dict[str, object]:
    """The parameters of ``_SETTLE`` (or its callback twin) for a DELIVERED, RETRY or DEAD outcome."""
    status, retry_at, dead_reason = settlement(kind, next_attempt_at, reason, now)
    return {
        **key,
        "status": status,
        "tried": int(a is not None),
        "retry_at": retry_at,
        "reason": dead_reason,
        "code": None if a is None else a.status_code,
        "error": None if a is None else a.error,
    }


def _attempt_logs(conn: Conn, table: str, key_column: str, key: int) -> tuple[AttemptLog, ...]:
    return attempt_logs(conn.execute(attempt_logs_query(table, key_column, "%s"), (key,)).fetchall())


def migrate(conn: Conn, name: str) -> int:
    """Create or migrate the schema in one transaction under the migration lock; returns the version."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        exists = conn.execute("SELECT to_regclass('dispatch_schema') IS NOT NULL").fetchone()
        if not (exists and exists[0]):  # asked first: a user without CREATE can run a migrated store
            conn.execute("CREATE TABLE dispatch_schema (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM dispatch_schema").fetchone()
        version = 0 if row is None else int(row[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"cannot open store {name}: schema version {version} was written by a newer dispatcher "
                f"(this one knows up to {SCHEMA_VERSION}); upgrade it"
            )
        for script in MIGRATIONS[version:]:
            conn.execute(script.encode())
        if row is None:
            conn.execute("INSERT INTO dispatch_schema VALUES (%s)", (SCHEMA_VERSION,))
        elif version < SCHEMA_VERSION:
            conn.execute("UPDATE dispatch_schema SET version = %s", (SCHEMA_VERSION,))
    return SCHEMA_VERSION


class PostgresStore:
    """``Store`` in a PostgreSQL database that several dispatchers may share."""

    #: Several processes share this store: the engine must not reclaim leases it did not take, and may
    #: hand the per-endpoint limit to the store (``share_limits``).
    shared = True

    def __init__(self, url: str, *, pool_size: int = 8, clock: Callable[[], float] = time.time) -> None:
        self._pool = Pool(url, size=pool_size)
        self.name = self._pool.name
        self._clock = clock
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._offset = 0.0
        self._offset_at = float("-inf")
        self._offset_lock = threading.Lock()
        self._endpoint_of: Callable[[str], str | None] | None = None
        self._per_endpoint = 0
        self._listener: Listener | None = None
        try:
            with self._pool.connect() as conn:
                try:
                    migrate(conn, self.name)
                except psycopg.Error as exc:
                    raise StoreError(
                        f"cannot open store {self.name}: schema migration failed: {exc}"
                    ) from None
                self._set_offset(clock_offset(conn, clock))
        except BaseException:
            self._pool.close()
            raise

    # -- shared operation -------------------------------------------------------------------------------

    def share_limits(self, endpoint_of: Callable[[str], str | None], per_endpoint: int) -> None:
        """Enforce ``per_endpoint`` leases per endpoint (``endpoint_of(webhook)``; None: a webhook this
        dispatcher does not have, whose deliveries it leaves to the others) across
        every dispatcher sharing this store, one while an endpoint fails. Enqueue then leases nothing."""
        self._endpoint_of = endpoint_of
        self._per_endpoint = per_endpoint

    def listen(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` whenever any dispatcher on this store made work due (LISTEN/NOTIFY)."""
        if self._listener is None:
            self._listener = Listener(self._pool, wake)

    def holders(self, now: float) -> int:
        """How many dispatchers hold live delivery leases."""
        with self._pool.transaction("holders") as conn:
            row = conn.execute(
                "SELECT count(DISTINCT holder) FROM deliveries WHERE lease_id IS NOT NULL"
                " AND lease_expires_at > %s",
                (self._db_time(conn, now),),
            ).fetchone()
        return int(row[0]) if row else 0

    def _set_offset(self, offset: float) -> None:
        with self._offset_lock:
            self._offset = offset
            self._offset_at = time.monotonic()

    def _db_time(self, conn: Conn, now: float) -> float:
        """``now`` (the caller's clock) on the database's clock."""
        if time.monotonic() - self._offset_at > _OFFSET_REFRESH_SECONDS:
            self._set_offset(clock_offset(conn, self._clock))
        return now + self._offset

    @staticmethod
    def _light(conn: Conn) -> None:
        conn.execute("SET LOCAL synchronous_commit = off")

    # -- ingest ------------------------------------------------------------------------------------------

    def enqueue(
        self,
        events: Sequence[NewEvent],
        now: float,
        lease_seconds: float | None = None,
        unleased: Collection[str] = (),
    ) -> list[EnqueueResult]:
        first_of: dict[str, NewEvent] = {}
        for event in events:
            first_of.setdefault(event.uuid, event)
        unique = list(first_of.values())
        if not unique:
            return []
        if self._endpoint_of is not None:
            lease_seconds = None  # the shared limit is applied by lease(), never bypassed here
        by_event: dict[str, tuple[int, ...]] = {}
        leases: dict[str, tuple[Lease, ...]] = {}
        with self._pool.transaction("enqueue") as conn:
            token = expires = None
            if lease_seconds is not None:
                token = self._next_token(conn)
                expires = self._db_time(conn, now) + lease_seconds
            inserted = conn.execute(
                _INSERT_EVENTS,
                {
                    "now": now,
                    "uuids": [e.uuid for e in unique],
                    "types": [e.type for e in unique],
                    "bodies": [e.body for e in unique],
                },
            ).fetchall()
            event_ids = {uuid: event_id for event_id, uuid in inserted}
            rows: list[tuple[int, str, bool]] = []
            for e in unique:
                if e.uuid in event_ids:
                    for webhook in dict.fromkeys(e.webhooks):
                        leased = token is not None and webhook not in unleased
                        rows.append((event_ids[e.uuid], webhook, leased))
            ids: dict[tuple[int, str], int] = {}
            if rows:
                created = conn.execute(
                    _INSERT_DELIVERIES,
                    {
                        "now": now,
                        "token": token,
                        "expires": expires,
                        "holder": self.holder,
                        "events": [r[0] for r in rows],
                        "webhooks": [r[1] for r in rows],
                        "leased": [r[2] for r in rows],
                    },
                ).fetchall()
                ids = {(event_id, webhook): delivery_id for delivery_id, event_id, webhook in created}
                if not all(r[2] for r in rows):
                    conn.execute(_NOTIFY)
        for e in unique:
            if e.uuid not in event_ids:
                continue
            webhooks = tuple(dict.fromkeys(e.webhooks))
            delivery_ids = tuple(ids[(event_ids[e.uuid], w)] for w in webhooks)
            by_event[e.uuid] = delivery_ids
            if token is not None and lease_seconds is not None:
                leases[e.uuid] = tuple(
                    Lease(i, token, now + lease_seconds, e.uuid, e.type, w, e.body, 0, now)
                    for i, w in zip(delivery_ids, webhooks, strict=True)
                    if w not in unleased
                )
        return [
            EnqueueResult(e.uuid, False, by_event.pop(e.uuid), leases.pop(e.uuid, ()))
            if e.uuid in by_event
            else EnqueueResult(e.uuid, duplicate=True)
            for e in events
        ]

    @staticmethod
    def _next_token(conn: Conn) -> int:
        row = conn.execute("SELECT nextval('lease_tokens')").fetchone()
        assert row is not None
        return int(row[0])

    # -- leases ------------------------------------------------------------------------------------------

    def lease(self, now: float, limit: int, lease_seconds: float, skip: Collection[str] = ()) -> list[Lease]:
        if limit <= 0:
            return []
        with self._pool.transaction("lease") as conn:
            token = self._begin_lease(conn)
            db_now = self._db_time(conn, now)
            params = {
                "now": now,
                "skip": sorted(skip),
                "limit": limit,
                "token": token,
                "expires": db_now + lease_seconds,
                "holder": self.holder,
            }
            if self._endpoint_of is None:
                rows = conn.execute(_LEASE_DUE, params).fetchall()
            else:
                rows = self._lease_limited(conn, params, db_now)
        rows.sort(key=lambda r: (r[7], r[0]))
        expires_at = now + lease_seconds
        return [Lease(r[0], token, expires_at, r[1], r[2], r[3], bytes(r[4]), r[5], r[6]) for r in rows]

    def _begin_lease(self, conn: Conn) -> int:
        """A lease transaction's first statement: commit lightly, take the lease lock when the limit is
        shared, and draw the lease token (one round trip)."""
        lock = "pg_advisory_xact_lock(%s)" if self._endpoint_of is not None else "%s::bigint"
        row = conn.execute(
            f"SELECT set_config('synchronous_commit', 'off', true), {lock}, nextval('lease_tokens')",
            (LEASE_LOCK,),
        ).fetchone()
        assert row is not None
        return int(row[2])

    def _lease_limited(self, conn: Conn, params: dict[str, Any], db_now: float) -> list[tuple[Any, ...]]:
        """Lease due work while keeping every endpoint within its share (all dispatchers counted); the
        lease lock is held (``_begin_lease``)."""
        endpoint_of = self._endpoint_of
        assert endpoint_of is not None
        inflight: dict[str, int] = {}
        for webhook, n in conn.execute(
            "SELECT webhook, count(*) FROM deliveries WHERE lease_id IS NOT NULL AND lease_expires_at > %s"
            " GROUP BY webhook",
            (db_now,),
        ):
            key = endpoint_of(webhook)
            if key is not None:
                inflight[key] = inflight.get(key, 0) + int(n)
        healthy = {key for key, ok in conn.execute("SELECT endpoint, healthy FROM endpoint_health") if ok}
        skip = set(params["skip"])
        taken: list[int] = []
        limit = int(params["limit"])
        for _ in range(_LIMITED_ROUNDS):
            want = min(limit - len(taken), _CANDIDATES)
            rows = conn.execute(
                _DUE_CANDIDATES, {**params, "skip": sorted(skip), "taken": taken, "limit": want}
            ).fetchall()
            for delivery_id, webhook in rows:
                key = endpoint_of(webhook)
                if key is None:
                    # Not in this dispatcher's table: left for one that has it (during a rollout that adds
                    # a webhook, a dispatcher still on the old tree must not bury its deliveries).
                    skip.add(webhook)
                    continue
                cap = self._per_endpoint if key in healthy else 1
                if inflight.get(key, 0) < cap:
                    inflight[key] = inflight.get(key, 0) + 1
                    taken.append(delivery_id)
                else:
                    skip.add(webhook)
            if len(taken) >= limit or len(rows) < want:
                break
        if not taken:
            return []
        return conn.execute(_LEASE_IDS, {**params, "ids": taken}).fetchall()

    def record(self, outcomes: Sequence[Outcome], now: float) -> int:
        first: dict[tuple[int, int], Outcome] = {}
        for outcome in outcomes:
            first.setdefault((outcome.delivery_id, outcome.lease_id), outcome)
        if not first:
            return 0
        attempt_rows: list[tuple[object, ...]] = []
        settle_rows: list[dict[str, object]] = []
        give_back_rows: list[dict[str, object]] = []
        callback_rows: list[dict[str, object]] = []
        health: dict[int, bool] = {}
        for o in first.values():
            key = {"id": o.delivery_id, "lease": o.lease_id, "now": now}
            if o.callback is not None and o.kind not in (OutcomeKind.HOLD, OutcomeKind.RELEASE):
                c = o.callback
                callback_rows.append(
                    {**key, "webhook": c.webhook, "url": c.url, "label": c.label, "payload": c.payload}
                )
            if o.kind is OutcomeKind.HOLD:
                give_back_rows.append({**key, "held": True, "due": o.next_attempt_at})
                continue
            if o.kind is OutcomeKind.RELEASE:
                due = now if o.next_attempt_at is None else o.next_attempt_at
                give_back_rows.append({**key, "held": False, "due": due})
                continue
            a = o.attempt
            if a is not None:
                attempt_rows.append((*attempt_row(a), o.delivery_id, o.lease_id))
                health[o.delivery_id] = a.healthy
            settle_rows.append(_settle_row(key, o.kind, a, o.next_attempt_at, o.reason, now))
        with self._pool.transaction("record") as conn:
            self._light(conn)
            if health and self._endpoint_of is not None:
                self._note_health(conn, health, now)
            cur = conn.cursor()
            if attempt_rows:  # before the updates: they clear the lease this insert checks
                cur.executemany(_INSERT_ATTEMPT, attempt_rows)
            if callback_rows:
                cur.executemany(_INSERT_CALLBACK, callback_rows)
            applied = 0
            if settle_rows:
                cur.executemany(
                    _SETTLE.format(table="deliveries", extra=" held = FALSE, holder = NULL,"), settle_rows
                )
                applied += max(cur.rowcount, 0)
            if give_back_rows:
                cur.executemany(_GIVE_BACK, give_back_rows)
                applied += max(cur.rowcount, 0)
            if applied:
                conn.execute(_NOTIFY)  # slots freed, retries or releases due: every dispatcher looks
        return applied

    def _note_health(self, conn: Conn, health: dict[int, bool], now: float) -> None:
        """Remember, per endpoint, whether its latest attempt found it healthy (shared "one slot")."""
        endpoint_of = self._endpoint_of
        assert endpoint_of is not None
        by_endpoint: dict[str, bool] = {}
        for delivery_id, webhook in conn.execute(
            "SELECT id, webhook FROM deliveries WHERE id = ANY(%s::bigint[])", (list(health),)
        ):
            key = endpoint_of(webhook)
            if key is not None:
                by_endpoint[key] = health[delivery_id]
        for key in sorted(by_endpoint):  # one order for every dispatcher: no deadlock between them
            conn.execute(
                "INSERT INTO endpoint_health AS h (endpoint, healthy, updated_at) VALUES (%s, %s, %s)"
                " ON CONFLICT (endpoint) DO UPDATE SET healthy = EXCLUDED.healthy,"
                " updated_at = EXCLUDED.updated_at"
                " WHERE h.healthy IS DISTINCT FROM EXCLUDED.healthy",
                (key, by_endpoint[key], now),
            )

    def reclaim_expired(self, now: float) -> int:
        with self._pool.transaction("reclaim") as conn:
            self._light(conn)
            db_now = self._db_time(conn, now)
            n = 0
            for table, extra in (("deliveries", ", holder = NULL"), ("callbacks", "")):
                n += conn.execute(
                    f"UPDATE {table} SET lease_id = NULL, lease_expires_at = NULL{extra}"
                    " WHERE lease_id IS NOT NULL AND lease_expires_at <= %s",
                    (db_now,),
                ).rowcount
            if n:
                conn.execute(_NOTIFY)
        return n

    # -- callbacks ---------------------------------------------------------------------------------------

    def lease_callbacks(self, now: float, limit: int, lease_seconds: float) -> list[CallbackLease]:
        if limit <= 0:
            return []
        with self._pool.transaction("lease_callbacks") as conn:
            self._light(conn)
            db_now = self._db_time(conn, now)
            token = self._next_token(conn)
            rows = conn.execute(
                f"WITH due AS (SELECT id FROM callbacks WHERE {CALLBACK_DUE} AND next_attempt_at <= %s"
                " ORDER BY next_attempt_at, id LIMIT %s FOR UPDATE SKIP LOCKED)"
                " UPDATE callbacks AS c SET lease_id = %s, lease_expires_at = %s FROM due WHERE c.id = due.id"
                " RETURNING c.id, c.webhook, c.url, c.payload, c.attempts, c.created_at, c.next_attempt_at",
                (now, limit, token, db_now + lease_seconds),
            ).fetchall()
        rows.sort(key=lambda r: (r[6], r[0]))
        expires_at = now + lease_seconds
        return [CallbackLease(r[0], token, expires_at, r[1], r[2], bytes(r[3]), r[4], r[5]) for r in rows]

    def record_callbacks(self, outcomes: Sequence[CallbackOutcome], now: float) -> int:
        first: dict[tuple[int, int], CallbackOutcome] = {}
        for outcome in outcomes:
            first.setdefault((outcome.callback_id, outcome.lease_id), outcome)
        if not first:
            return 0
        attempt_rows: list[tuple[object, ...]] = []
        settle_rows: list[dict[str, object]] = []
        give_back_rows: list[dict[str, object]] = []
        for o in first.values():
            key = {"id": o.callback_id, "lease": o.lease_id, "now": now}
            if o.kind in (OutcomeKind.RELEASE, OutcomeKind.HOLD):
                give_back_rows.append({**key, "due": now if o.next_attempt_at is None else o.next_attempt_at})
                continue
            a = o.attempt
            if a is not None:
                attempt_rows.append((*attempt_row(a), o.callback_id, o.lease_id))
            settle_rows.append(_settle_row(key, o.kind, a, o.next_attempt_at, o.reason, now))
        with self._pool.transaction("record_callbacks") as conn:
            self._light(conn)
            cur = conn.cursor()
            if attempt_rows:
                cur.executemany(_INSERT_CALLBACK_ATTEMPT, attempt_rows)
            applied = 0
            if settle_rows:
                cur.executemany(_SETTLE.format(table="callbacks", extra=""), settle_rows)
                applied += max(cur.rowcount, 0)
            if give_back_rows:
                cur.executemany(_GIVE_BACK_CALLBACK, give_back_rows)
                applied += max(cur.rowcount, 0)
        return applied

    def next_callback_due_at(self) -> float | None:
        return self._first_due("callbacks", CALLBACK_DUE)

    def list_callbacks(self, query: DeliveryQuery) -> list[Callback]:
        where, params = query_where(query, "", "delivery_id", "%s")
        sql = f"SELECT {_CALLBACK_COLUMNS} FROM callbacks{where} ORDER BY created_at DESC, id DESC LIMIT %s"
        with self._pool.transaction("list_callbacks") as conn:
            rows = conn.execute(sql, (*params, max(query.limit, 0))).fetchall()
        return [_callback(row) for row in rows]

    def get_callback(self, callback_id: int) -> CallbackDetail | None:
        with self._pool.transaction("show_callback") as conn:
            row = conn.execute(
                f"SELECT {_CALLBACK_COLUMNS}, payload FROM callbacks WHERE id = %s", (callback_id,)
            ).fetchone()
            if row is None:
                return None
            logs = _attempt_logs(conn, "callback_attempts", "callback_id", callback_id)
        return CallbackDetail(_callback(row), bytes(row[12]), logs)

    def requeue_callbacks(self, callback_ids: Sequence[int], now: float) -> int:
        if not callback_ids:
            return 0
        return self._requeue(
            "requeue_callbacks",
            f"{_REQUEUE_CALLBACK} WHERE id = ANY(%(ids)s::bigint[]) AND status != 'delivered'"
            " AND lease_id IS NULL",
            {"now": now, "ids": list(dict.fromkeys(callback_ids))},
        )

    def requeue_dead_callbacks(
        self, now: float, webhook: str | None = None, since: float | None = None
    ) -> int:
        return self._requeue(
            "requeue_callbacks",
            f"{_REQUEUE_CALLBACK} WHERE status = 'dead' AND lease_id IS NULL"
            " AND (%(webhook)s::text IS NULL OR webhook = %(webhook)s)"
            " AND (%(since)s::float8 IS NULL OR created_at >= %(since)s)",
            {"now": now, "webhook": webhook, "since": since},
        )

    # -- deliveries ----------------------------------------------------------------------------------------

    def _first_due(self, table: str, condition: str) -> float | None:
        with self._pool.transaction("next_due_at") as conn:
            row = conn.execute(
                f"SELECT next_attempt_at FROM {table} WHERE {condition} ORDER BY next_attempt_at LIMIT 1"
            ).fetchone()
        return None if row is None else float(row[0])

    def next_due_at(self) -> float | None:
        return self._first_due("deliveries", DUE)

    def _requeue(self, action: str, sql: str, params: dict[str, object]) -> int:
        with self._pool.transaction(action) as conn:
            n = conn.execute(sql, params).rowcount
            if n:
                conn.execute(_NOTIFY)
        return n

    def requeue(self, delivery_ids: Sequence[int], now: float) -> int:
        if not delivery_ids:
            return 0
        return self._requeue(
            "requeue",
            f"{_REQUEUE} WHERE id = ANY(%(ids)s::bigint[]) AND status != 'delivered' AND lease_id IS NULL",
            {"now": now, "ids": list(dict.fromkeys(delivery_ids))},
        )

    def requeue_dead(self, now: float, webhook: str | None = None, since: float | None = None) -> int:
        return self._requeue(
            "requeue",
            f"{_REQUEUE} WHERE status = 'dead' AND lease_id IS NULL"
            " AND (%(webhook)s::text IS NULL OR webhook = %(webhook)s)"
            " AND (%(since)s::float8 IS NULL OR created_at >= %(since)s)",
            {"now": now, "webhook": webhook, "since": since},
        )

    def release_held(self, webhook: str, now: float) -> int:
        return self._requeue(
            "release_held",
            "UPDATE deliveries SET held = FALSE, next_attempt_at = %(now)s, updated_at = %(now)s"
            " WHERE webhook = %(webhook)s AND status IN ('pending', 'failed') AND held AND lease_id IS NULL",
            {"now": now, "webhook": webhook},
        )

    def bury_webhook(self, webhook: str, reason: str, now: float) -> int:
        with self._pool.transaction("bury_webhook") as conn:
            return conn.execute(
                "UPDATE deliveries SET status = 'dead', dead_reason = %s, held = FALSE,"
                " next_attempt_at = NULL, updated_at = %s WHERE webhook = %s"
                " AND status IN ('pending', 'failed') AND lease_id IS NULL",
                (reason, now, webhook),
            ).rowcount

    def open_webhooks(self) -> set[str]:
        # A skip scan over the webhook index: one probe per distinct name instead of reading every row.
        with self._pool.transaction("open_webhooks") as conn:
            rows = conn.execute(OPEN_WEBHOOKS).fetchall()
        return {row[0] for row in rows}

    def list_deliveries(self, query: DeliveryQuery) -> list[Delivery]:
        where, params = query_where(query, "d.", "d.id", "%s")
        sql = (
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries AS d JOIN events AS e ON e.id = d.event_id{where}"
            " ORDER BY d.created_at DESC, d.id DESC LIMIT %s"
        )
        with self._pool.transaction("list") as conn:
            rows = conn.execute(sql, (*params, max(query.limit, 0))).fetchall()
        return [_delivery(row) for row in rows]

    def get_delivery(self, delivery_id: int) -> DeliveryDetail | None:
        with self._pool.transaction("show") as conn:
            row = conn.execute(
                f"SELECT {_DELIVERY_COLUMNS}, e.body"
                " FROM deliveries AS d JOIN events AS e ON e.id = d.event_id WHERE d.id = %s",
                (delivery_id,),
            ).fetchone()
            if row is None:
                return None
            logs = _attempt_logs(conn, "attempts", "delivery_id", delivery_id)
        return DeliveryDetail(_delivery(row), bytes(row[12]), logs)

    def counts(self) -> dict[DeliveryStatus, int]:
        result = dict.fromkeys(DeliveryStatus, 0)
        with self._pool.transaction("counts") as conn:
            for status, n in conn.execute("SELECT status, sum(n) FROM delivery_counts GROUP BY status"):
                result[DeliveryStatus(status)] = int(n)
        return result

    def oldest_open_created_at(self) -> float | None:
        with self._pool.transaction("oldest_open_created_at") as conn:
            row = conn.execute(
                "SELECT LEAST((SELECT min(created_at) FROM deliveries WHERE status = 'pending'),"
                " (SELECT min(created_at) FROM deliveries WHERE status = 'failed'))"
            ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def prune(self, now: float, delivered_older_than_seconds: float) -> int:
        cutoff = now - delivered_older_than_seconds
        removed = 0
        while True:
            with self._pool.transaction("prune") as conn:
                n = conn.execute(
                    "WITH doomed AS (SELECT id FROM deliveries WHERE status = 'delivered'"
                    " AND created_at < %(c)s AND updated_at < %(c)s LIMIT %(n)s FOR UPDATE SKIP LOCKED),"
                    " gone AS (DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM doomed))"
                    " DELETE FROM deliveries WHERE id IN (SELECT id FROM doomed)",
                    {"c": cutoff, "n": PRUNE_CHUNK},
                ).rowcount
            removed += n
            if n < PRUNE_CHUNK:
                break
        while True:
            with self._pool.transaction("prune") as conn:
                n = conn.execute(
                    "WITH doomed AS (SELECT id FROM callbacks WHERE status = 'delivered'"
                    " AND updated_at < %(c)s LIMIT %(n)s FOR UPDATE SKIP LOCKED),"
                    " gone AS (DELETE FROM callback_attempts WHERE callback_id IN (SELECT id FROM doomed))"
                    " DELETE FROM callbacks WHERE id IN (SELECT id FROM doomed)",
                    {"c": cutoff, "n": PRUNE_CHUNK},
                ).rowcount
            if n < PRUNE_CHUNK:
                break
        after = 0
        while True:
            with self._pool.transaction("prune") as conn:
                rows = conn.execute(
                    "SELECT id FROM events WHERE created_at < %s AND id > %s ORDER BY id LIMIT %s",
                    (cutoff, after, PRUNE_CHUNK),
                ).fetchall()
                ids = [r[0] for r in rows]
                if ids:
                    conn.execute(
                        "DELETE FROM events AS e WHERE e.id = ANY(%s::bigint[])"
                        " AND NOT EXISTS (SELECT 1 FROM deliveries AS d WHERE d.event_id = e.id)",
                        (ids,),
                    )
            if len(ids) < PRUNE_CHUNK:
                break
            after = ids[-1]
        return removed

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        self._pool.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
