"""The in-memory backend: the reference semantics of ``Store``, for tests and for trying things out.

It follows the decisions of the SQLite backend (see ``dispatcher/store/sqlite.py``): lease tokens are one per
call and strictly increasing; ``attempts`` counts the current schedule while attempt numbers continue across
requeues; newest first is ``created_at DESC, id DESC``. Lookups that SQLite answers from an index are linear
scans here: fine for tests, not meant for a million deliveries.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TypeVar

from dispatcher.store.base import (
    OPEN_STATUSES,
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
    NewCallback,
    NewEvent,
    Outcome,
    OutcomeKind,
)


@dataclass(frozen=True)
class _Event:
    uuid: str
    type: str
    body: bytes
    created_at: float


@dataclass
class _Row:
    """A delivery's mutable state (the frozen ``Delivery`` is built from it on the way out)."""

    id: int
    event: _Event
    webhook: str
    created_at: float
    updated_at: float
    next_attempt_at: float | None
    status: DeliveryStatus = DeliveryStatus.PENDING
    held: bool = False
    attempts: int = 0
    lease_id: int | None = None
    lease_expires_at: float | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    dead_reason: str | None = None
    log: list[AttemptLog] = field(default_factory=list)

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def is_due_candidate(self) -> bool:
        return self.is_open and not self.held and self.lease_id is None

    def lease(self, lease_id: int, expires_at: float) -> Lease:
        self.lease_id, self.lease_expires_at = lease_id, expires_at
        return self.current_lease(lease_id, expires_at)

    def current_lease(self, lease_id: int, expires_at: float) -> Lease:
        e = self.event
        return Lease(self.id, lease_id, expires_at, e.uuid, e.type, self.webhook, e.body, self.attempts,
                     self.created_at)  # fmt: skip

    def requeue(self, now: float) -> None:
        self.status, self.attempts, self.next_attempt_at = DeliveryStatus.PENDING, 0, now
        self.held, self.dead_reason, self.updated_at = False, None, now

    def public(self) -> Delivery:
        return Delivery(
            id=self.id,
            event_uuid=self.event.uuid,
            event_type=self.event.type,
            webhook=self.webhook,
            status=self.status,
            attempts=self.attempts,
            created_at=self.created_at,
            updated_at=self.updated_at,
            next_attempt_at=self.next_attempt_at,
            last_status_code=self.last_status_code,
            last_error=self.last_error,
            dead_reason=self.dead_reason,
        )


@dataclass
class _CallbackRow:
    """A stored callback's mutable state."""

    id: int
    delivery_id: int
    new: NewCallback
    created_at: float
    updated_at: float
    next_attempt_at: float | None
    status: DeliveryStatus = DeliveryStatus.PENDING
    attempts: int = 0
    lease_id: int | None = None
    lease_expires_at: float | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    dead_reason: str | None = None
    log: list[AttemptLog] = field(default_factory=list)

    @property
    def is_due_candidate(self) -> bool:
        return self.status in OPEN_STATUSES and self.lease_id is None

    def requeue(self, now: float) -> None:
        self.status, self.attempts, self.next_attempt_at = DeliveryStatus.PENDING, 0, now
        self.dead_reason, self.updated_at = None, now

    def public(self) -> Callback:
        return Callback(
            id=self.id,
            webhook=self.new.webhook,
            delivery_id=self.delivery_id,
            label=self.new.label,
            status=self.status,
            attempts=self.attempts,
            created_at=self.created_at,
            updated_at=self.updated_at,
            next_attempt_at=self.next_attempt_at,
            last_status_code=self.last_status_code,
            last_error=self.last_error,
            dead_reason=self.dead_reason,
        )


_R = TypeVar("_R", _Row, _CallbackRow)


def _log_entry(number: int, attempt: AttemptRecord) -> AttemptLog:
    return AttemptLog(
        number=number,
        started_at=attempt.started_at,
        duration_seconds=attempt.duration_seconds,
        status_code=attempt.status_code,
        error=attempt.error,
        response_headers=dict(attempt.response_headers),
        response_excerpt=attempt.response_excerpt,
    )


def _settle(
    row: _Row | _CallbackRow,
    kind: OutcomeKind,
    attempt: AttemptRecord | None,
    next_attempt_at: float | None,
    reason: str | None,
    now: float,
) -> None:
    """Apply a DELIVERED, RETRY or DEAD outcome (a delivery's or a callback's): count and log its attempt,
    then set the status and the next due time."""
    if attempt is not None:
        row.attempts += 1
        row.last_status_code, row.last_error = attempt.status_code, attempt.error
        row.log.append(_log_entry(len(row.log) + 1, attempt))
    row.dead_reason = None
    if kind is OutcomeKind.RETRY:
        row.status = DeliveryStatus.FAILED
        row.next_attempt_at = now if next_attempt_at is None else next_attempt_at
    elif kind is OutcomeKind.DELIVERED:
        row.status, row.next_attempt_at = DeliveryStatus.DELIVERED, None
    else:
        row.status, row.next_attempt_at, row.dead_reason = DeliveryStatus.DEAD, None, reason


def _matches(query: DeliveryQuery, row: _Row | _CallbackRow, webhook: str, delivery_id: int) -> bool:
    return (
        (query.status is None or row.status == query.status)
        and (query.webhook is None or webhook == query.webhook)
        and (query.since is None or row.created_at >= query.since)
        and (query.delivery_id is None or delivery_id == query.delivery_id)
    )


def _newest(rows: list[_R], limit: int) -> list[_R]:
    """Newest first (``created_at DESC, id DESC``), at most ``limit``."""
    return sorted(rows, key=lambda r: (r.created_at, r.id), reverse=True)[: max(limit, 0)]


class MemoryStore:
    """``Store`` in process memory; every method holds one lock, so each is atomic and thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, _Event] = {}
        self._rows: dict[int, _Row] = {}  # by id, in id order
        self._delivery_ids = itertools.count(1)
        self._lease_ids = itertools.count(1)
        self._callbacks: dict[int, _CallbackRow] = {}
        self._callback_ids = itertools.count(1)

    def enqueue(
        self,
        events: Sequence[NewEvent],
        now: float,
        lease_seconds: float | None = None,
        unleased: Collection[str] = (),
    ) -> list[EnqueueResult]:
        results: list[EnqueueResult] = []
        with self._lock:
            token = next(self._lease_ids) if lease_seconds is not None else None
            for new in events:
                if new.uuid in self._events:
                    results.append(EnqueueResult(new.uuid, duplicate=True))
                    continue
                event = self._events[new.uuid] = _Event(new.uuid, new.type, new.body, now)
                ids: list[int] = []
                leases: list[Lease] = []
                for webhook in dict.fromkeys(new.webhooks):
                    row = _Row(next(self._delivery_ids), event, webhook, now, now, next_attempt_at=now)
                    if token is not None and lease_seconds is not None and webhook not in unleased:
                        leases.append(row.lease(token, now + lease_seconds))
                    self._rows[row.id] = row
                    ids.append(row.id)
                results.append(EnqueueResult(new.uuid, False, tuple(ids), tuple(leases)))
        return results

    def lease(self, now: float, limit: int, lease_seconds: float, skip: Collection[str] = ()) -> list[Lease]:
        with self._lock:
            due = [
                r
                for r in self._rows.values()
                if r.is_due_candidate and self._due(r) <= now and r.webhook not in skip
            ]
            due.sort(key=lambda r: (self._due(r), r.id))
            if not due or limit <= 0:
                return []
            token = next(self._lease_ids)
            return [row.lease(token, now + lease_seconds) for row in due[:limit]]

    @staticmethod
    def _due(row: _Row) -> float:
        assert row.next_attempt_at is not None, "open deliveries always have a due time"
        return row.next_attempt_at

    def record(self, outcomes: Sequence[Outcome], now: float) -> int:
        applied = 0
        with self._lock:
            for outcome in outcomes:
                row = self._rows.get(outcome.delivery_id)
                if row is None or row.lease_id is None or row.lease_id != outcome.lease_id:
                    continue  # stale: reclaimed (and maybe leased again) since this outcome's lease
                self._apply(row, outcome, now)
                if outcome.callback is not None and outcome.kind not in (
                    OutcomeKind.HOLD,
                    OutcomeKind.RELEASE,
                ):
                    cid = next(self._callback_ids)
                    self._callbacks[cid] = _CallbackRow(cid, row.id, outcome.callback, now, now, now)
                applied += 1
        return applied

    @staticmethod
    def _apply(row: _Row, outcome: Outcome, now: float) -> None:
        row.lease_id = row.lease_expires_at = None
        row.updated_at = now
        kind = outcome.kind
        if kind is OutcomeKind.HOLD:
            row.held = True
            if outcome.next_attempt_at is not None:
                row.next_attempt_at = outcome.next_attempt_at
            return
        if kind is OutcomeKind.RELEASE:
            row.next_attempt_at = now if outcome.next_attempt_at is None else outcome.next_attempt_at
            return
        row.held = False
        _settle(row, kind, outcome.attempt, outcome.next_attempt_at, outcome.reason, now)

    def reclaim_expired(self, now: float) -> int:
        with self._lock:
            expired = [
                r for r in self._rows.values() if r.lease_expires_at is not None and r.lease_expires_at <= now
            ]
            for row in expired:
                row.lease_id = row.lease_expires_at = None
            stale = [
                c
                for c in self._callbacks.values()
                if c.lease_expires_at is not None and c.lease_expires_at <= now
            ]
            for cb in stale:
                cb.lease_id = cb.lease_expires_at = None
        return len(expired) + len(stale)

    def lease_callbacks(self, now: float, limit: int, lease_seconds: float) -> list[CallbackLease]:
        with self._lock:
            due = [
                c
                for c in self._callbacks.values()
                if c.is_due_candidate and c.next_attempt_at is not None and c.next_attempt_at <= now
            ]
            due.sort(key=lambda c: (c.next_attempt_at, c.id))
            if not due or limit <= 0:
                return []
            token = next(self._lease_ids)
            leases: list[CallbackLease] = []
            for cb in due[:limit]:
                cb.lease_id, cb.lease_expires_at = token, now + lease_seconds
                n = cb.new
                leases.append(
                    CallbackLease(
                        cb.id,
                        token,
                        now + lease_seconds,
                        n.webhook,
                        n.url,
                        n.payload,
                        cb.attempts,
                        cb.created_at,
                    )
                )
            return leases

    def record_callbacks(self, outcomes: Sequence[CallbackOutcome], now: float) -> int:
        applied = 0
        with self._lock:
            for o in outcomes:
                cb = self._callbacks.get(o.callback_id)
                if cb is None or cb.lease_id is None or cb.lease_id != o.lease_id:
                    continue
                cb.lease_id = cb.lease_expires_at = None
                cb.updated_at = now
                applied += 1
                if o.kind in (OutcomeKind.RELEASE, OutcomeKind.HOLD):
                    cb.next_attempt_at = now if o.next_attempt_at is None else o.next_attempt_at
                    continue
                _settle(cb, o.kind, o.attempt, o.next_attempt_at, o.reason, now)
        return applied

    def next_callback_due_at(self) -> float | None:
        with self._lock:
            due = [c.next_attempt_at for c in self._callbacks.values() if c.is_due_candidate]
            return min((at for at in due if at is not None), default=None)

    def list_callbacks(self, query: DeliveryQuery) -> list[Callback]:
        with self._lock:
            rows = [c for c in self._callbacks.values() if _matches(query, c, c.new.webhook, c.delivery_id)]
            return [c.public() for c in _newest(rows, query.limit)]

    def get_callback(self, callback_id: int) -> CallbackDetail | None:
        with self._lock:
            cb = self._callbacks.get(callback_id)
            if cb is None:
                return None
            return CallbackDetail(cb.public(), cb.new.payload, tuple(cb.log))

    def requeue_callbacks(self, callback_ids: Sequence[int], now: float) -> int:
        with self._lock:
            rows = (self._callbacks.get(callback_id) for callback_id in dict.fromkeys(callback_ids))
            return self._requeue(
                (c for c in rows if c and c.status is not DeliveryStatus.DELIVERED and c.lease_id is None),
                now,
            )

    def requeue_dead_callbacks(
        self, now: float, webhook: str | None = None, since: float | None = None
    ) -> int:
        with self._lock:
            return self._requeue(
                (
                    c
                    for c in self._callbacks.values()
                    if c.status is DeliveryStatus.DEAD
                    and c.lease_id is None
                    and (webhook is None or c.new.webhook == webhook)
                    and (since is None or c.created_at >= since)
                ),
                now,
            )

    def next_due_at(self) -> float | None:
        with self._lock:
            return min((self._due(r) for r in self._rows.values() if r.is_due_candidate), default=None)

    def requeue(self, delivery_ids: Sequence[int], now: float) -> int:
        with self._lock:
            rows = (self._rows.get(delivery_id) for delivery_id in dict.fromkeys(delivery_ids))
            return self._requeue(
                (r for r in rows if r and r.status is not DeliveryStatus.DELIVERED and r.lease_id is None),
                now,
            )

    def requeue_dead(self, now: float, webhook: str | None = None, since: float | None = None) -> int:
        with self._lock:
            return self._requeue(
                (
                    r
                    for r in self._rows.values()
                    if r.status is DeliveryStatus.DEAD
                    and (webhook is None or r.webhook == webhook)
                    and (since is None or r.created_at >= since)
                ),
                now,
            )

    @staticmethod
    def _requeue(rows: Iterable[_Row | _CallbackRow], now: float) -> int:
        count = 0
        for row in rows:
            row.requeue(now)
            count += 1
        return count

    def release_held(self, webhook: str, now: float) -> int:
        with self._lock:
            held = [r for r in self._rows.values() if r.webhook == webhook and r.is_open and r.held]
            for row in held:
                row.held, row.next_attempt_at, row.updated_at = False, now, now
        return len(held)

    def bury_webhook(self, webhook: str, reason: str, now: float) -> int:
        with self._lock:
            rows = [
                r for r in self._rows.values() if r.webhook == webhook and r.is_open and r.lease_id is None
            ]
            for row in rows:
                row.status, row.dead_reason, row.held = DeliveryStatus.DEAD, reason, False
                row.next_attempt_at, row.updated_at = None, now
        return len(rows)

    def open_webhooks(self) -> set[str]:
        with self._lock:
            return {r.webhook for r in self._rows.values() if r.is_open}

    def list_deliveries(self, query: DeliveryQuery) -> list[Delivery]:
        with self._lock:
            rows = [r for r in self._rows.values() if _matches(query, r, r.webhook, r.id)]
            return [r.public() for r in _newest(rows, query.limit)]

    def get_delivery(self, delivery_id: int) -> DeliveryDetail | None:
        with self._lock:
            row = self._rows.get(delivery_id)
            if row is None:
                return None
            return DeliveryDetail(row.public(), row.event.body, tuple(row.log))

    def counts(self) -> dict[DeliveryStatus, int]:
        result = dict.fromkeys(DeliveryStatus, 0)
        with self._lock:
            for row in self._rows.values():
                result[row.status] += 1
        return result

    def oldest_open_created_at(self) -> float | None:
        with self._lock:
            return min((r.created_at for r in self._rows.values() if r.is_open), default=None)

    def prune(self, now: float, delivered_older_than_seconds: float) -> int:
        cutoff = now - delivered_older_than_seconds
        with self._lock:
            old = [
                r.id
                for r in self._rows.values()
                if r.status is DeliveryStatus.DELIVERED and r.updated_at < cutoff
            ]
            for delivery_id in old:
                del self._rows[delivery_id]
            for cb in [
                c
                for c in self._callbacks.values()
                if c.status is DeliveryStatus.DELIVERED and c.updated_at < cutoff
            ]:
                del self._callbacks[cb.id]
            referenced = {r.event.uuid for r in self._rows.values()}
            for uuid in [u for u, e in self._events.items() if e.created_at < cutoff and u not in referenced]:
                del self._events[uuid]
        return len(old)

    def close(self) -> None:
        """Nothing to release; kept for the ``Store`` contract."""

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
