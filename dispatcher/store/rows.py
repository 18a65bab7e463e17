"""What the SQL stores (SQLite, PostgreSQL) share: attempt rows, how an outcome settles a row, the WHERE
clause of a listing, and attempt logs read back. ``mark`` is the driver's parameter placeholder (``?`` for
sqlite3, ``%s`` for psycopg); everything else is the same SQL on both."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from dispatcher.store.base import AttemptLog, AttemptRecord, DeliveryQuery, DeliveryStatus, OutcomeKind

#: The columns ``attempt_logs`` reads, in its order.
ATTEMPT_LOG_COLUMNS = (
    "number, started_at, duration_seconds, status_code, error, response_headers, response_excerpt"
)

#: The webhooks with open deliveries, by a skip scan over the webhook index: one seek per distinct name
#: instead of reading every delivery (the same SQL on both engines).
OPEN_WEBHOOKS = (
    "WITH RECURSIVE names (webhook) AS ("
    " SELECT (SELECT webhook FROM deliveries ORDER BY webhook LIMIT 1)"
    " UNION ALL SELECT (SELECT d.webhook FROM deliveries AS d WHERE d.webhook > names.webhook"
    " ORDER BY d.webhook LIMIT 1) FROM names WHERE names.webhook IS NOT NULL)"
    " SELECT webhook FROM names WHERE webhook IS NOT NULL AND EXISTS ("
    " SELECT 1 FROM deliveries AS d WHERE d.webhook = names.webhook"
    " AND d.status IN ('pending', 'failed'))"
)


def attempt_row(a: AttemptRecord) -> tuple[object, ...]:
    """An attempt's values for its INSERT: started_at, duration, status, error, headers (JSON), excerpt."""
    headers = json.dumps(a.response_headers) if a.response_headers else "{}"
    return (a.started_at, a.duration_seconds, a.status_code, a.error, headers, a.response_excerpt)


def settlement(
    kind: OutcomeKind, next_attempt_at: float | None, reason: str | None, now: float
) -> tuple[str, float | None, str | None]:
    """The status, retry time and dead reason a DELIVERED, RETRY or DEAD outcome settles a row with."""
    if kind is OutcomeKind.RETRY:
        return "failed", now if next_attempt_at is None else next_attempt_at, None
    if kind is OutcomeKind.DELIVERED:
        return "delivered", None, None
    return "dead", None, reason


def query_where(
    query: DeliveryQuery, alias: str, delivery_id_column: str, mark: str
) -> tuple[str, list[object]]:
    """``list_deliveries``/``list_callbacks``: the WHERE clause (empty without filters) and its parameters."""
    where: list[str] = []
    params: list[object] = []
    if query.status is not None:
        where.append(f"{alias}status = {mark}")
        params.append(DeliveryStatus(query.status).value)
    if query.webhook is not None:
        where.append(f"{alias}webhook = {mark}")
        params.append(query.webhook)
    if query.since is not None:
        where.append(f"{alias}created_at >= {mark}")
        params.append(query.since)
    if query.delivery_id is not None:
        where.append(f"{delivery_id_column} = {mark}")
        params.append(query.delivery_id)
    return (" WHERE " + " AND ".join(where) if where else ""), params


def attempt_logs_query(table: str, key_column: str, mark: str) -> str:
    """The SELECT of one delivery's (or callback's) attempts, oldest first."""
    return f"SELECT {ATTEMPT_LOG_COLUMNS} FROM {table} WHERE {key_column} = {mark} ORDER BY number"


def attempt_logs(rows: Iterable[Sequence[Any]]) -> tuple[AttemptLog, ...]:
    """Rows of ``attempt_logs_query`` as attempt logs."""
    return tuple(AttemptLog(n, s, d, code, err, json.loads(h), x) for n, s, d, code, err, h, x in rows)
