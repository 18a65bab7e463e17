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

from dispatcher.store.base import (
    OPEN_STATUSES,
    AttemptLog,
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


class MemoryStore:
    """``Store`` in process memory; every method holds one lock, so each is atomic and thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, _Event] = {}
        self._rows: dict[int, _Row] = {}  # by id, in id order
        self._delivery_ids = itertools.count(1)
        self._lease_ids = itertools.count(1)

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
                for webhook in dict.fromkeys(new.webhooks):
                    row = _Row(next(self._delivery_ids), event, webhook, now, now, next_attempt_at=now)
                    if token is not None and lease_seconds is not None and webhook not in unleased:
                        row.lease(token, now + lease_seconds)
                    self._rows[row.id] = row
                    ids.append(row.id)
                results.append(EnqueueResult(new.uuid, duplicate=False, delivery_ids=tuple(ids)))
        return results

    def lease_for(self, delivery_ids: Sequence[int]) -> list[Lease]:
        leases: list[Lease] = []
        with self._lock:
            for delivery_id in dict.fromkeys(delivery_ids):
                row = self._rows.get(delivery_id)
                if row is not None and row.lease_id is not None and row.lease_expires_at is not None:
                    leases.append(row.current_lease(row.lease_id, row.lease_expires_at))
        return leases

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
        attempt = outcome.attempt
        if attempt is not None:
            row.attempts += 1
            row.last_status_code, row.last_error = attempt.status_code, attempt.error
            row.log.append(
                AttemptLog(
                    number=len(row.log) + 1,
                    started_at=attempt.started_at,
                    duration_seconds=attempt.duration_seconds,
                    status_code=attempt.status_code,
                    error=attempt.error,
                    response_headers=dict(attempt.response_headers),
                    response_excerpt=attempt.response_excerpt,
                )
            )
        row.held, row.dead_reason = False, None
        if kind is OutcomeKind.RETRY:
            row.status = DeliveryStatus.FAILED
            row.next_attempt_at = now if outcome.next_attempt_at is None else outcome.next_attempt_at
        elif kind is OutcomeKind.DELIVERED:
            row.status, row.next_attempt_at = DeliveryStatus.DELIVERED, None
        else:
            row.status, row.next_attempt_at, row.dead_reason = DeliveryStatus.DEAD, None, outcome.reason

    def reclaim_expired(self, now: float) -> int:
        with self._lock:
            expired = [
                r for r in self._rows.values() if r.lease_expires_at is not None and r.lease_expires_at <= now
            ]
            for row in expired:
                row.lease_id = row.lease_expires_at = None
        return len(expired)

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
    def _requeue(rows: Iterable[_Row], now: float) -> int:
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
            rows = [
                r
                for r in self._rows.values()
                if (query.status is None or r.status == query.status)
                and (query.webhook is None or r.webhook == query.webhook)
                and (query.since is None or r.created_at >= query.since)
            ]
            rows.sort(key=lambda r: (r.created_at, r.id), reverse=True)
            return [r.public() for r in rows[: max(query.limit, 0)]]

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
