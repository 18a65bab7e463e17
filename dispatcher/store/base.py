"""The store contract: every backend (SQLite, memory, a future Redis) implements ``Store``.

At-least-once is lease and acknowledge: a delivery is *leased* (invisible to other workers until the lease
deadline), attempted, then *recorded* with one outcome (delivered, rescheduled, buried or released). A lease
whose deadline passes without an outcome is *reclaimed* and the delivery becomes due again. Nothing is ever
deleted on read.

Times are unix seconds (float) passed in by the caller: the store never reads the clock.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol


class DeliveryStatus(str, Enum):
    PENDING = "pending"  # waiting for its first attempt (or in flight)
    FAILED = "failed"  # at least one attempt failed; another one is scheduled
    DELIVERED = "delivered"  # a 2xx was received
    DEAD = "dead"  # no further attempts; listable and retryable


#: Statuses whose deliveries are still due for attempts.
OPEN_STATUSES = (DeliveryStatus.PENDING, DeliveryStatus.FAILED)


class OutcomeKind(str, Enum):
    DELIVERED = "delivered"  # ack: status -> delivered
    RETRY = "retry"  # reschedule: status -> failed, next_attempt_at set
    DEAD = "dead"  # bury: status -> dead, reason set
    RELEASE = "release"  # give the lease back without an attempt (e.g. shutdown); due at next_attempt_at
    HOLD = "hold"  # give the lease back and park it (webhook inactive) until ``release_held``


@dataclass(frozen=True)
class NewCallback:
    """A callback to store with the outcome that triggers it (same transaction: recorded means it will be
    sent, even across a crash). ``payload`` is the JSON outcome record; it holds no secret and no body."""

    webhook: str
    url: str
    label: str  # the outcome reported: "delivered" | "failed" | "dead"
    payload: bytes


@dataclass(frozen=True)
class NewEvent:
    """An accepted event and the webhooks it was routed to."""

    uuid: str  # normalised: 32 lowercase hex digits
    type: str
    body: bytes  # the exact bytes POSTed on every attempt
    webhooks: tuple[str, ...]


@dataclass(frozen=True)
class EnqueueResult:
    uuid: str
    duplicate: bool  # the uuid was already accepted within the retention window; nothing was stored
    delivery_ids: tuple[int, ...] = ()
    #: The leases this call created for the event's deliveries (``enqueue`` with ``lease_seconds``; webhooks
    #: in ``unleased`` excluded), in the order of ``NewEvent.webhooks``.
    leases: tuple[Lease, ...] = ()


@dataclass(frozen=True)
class Lease:
    """A delivery handed to one worker until ``expires_at``."""

    delivery_id: int
    lease_id: int  # opaque token; an outcome with a stale token is ignored
    expires_at: float
    event_uuid: str
    event_type: str
    webhook: str
    body: bytes
    attempts: int  # attempts made so far (0 for a new delivery)
    created_at: float


@dataclass(frozen=True)
class AttemptRecord:
    """What one HTTP attempt did. Never holds a secret: headers of interest only, body excerpt only."""

    started_at: float
    duration_seconds: float
    status_code: int | None = None
    error: str | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    response_excerpt: str = ""  # first 4 KiB of the body, decoded leniently

    @property
    def healthy(self) -> bool:
        """Whether the attempt found its endpoint healthy: it answered, and not with 5xx or 429."""
        code = self.status_code
        return code is not None and code < 500 and code != 429


@dataclass(frozen=True)
class Outcome:
    """The result of handling one lease."""

    delivery_id: int
    lease_id: int
    kind: OutcomeKind
    attempt: AttemptRecord | None = None  # None for RELEASE (and for DEAD without an attempt)
    next_attempt_at: float | None = None  # RETRY and RELEASE: when it is due again
    reason: str | None = None  # DEAD: why (e.g. "410 Gone", "max attempts reached", "webhook removed")
    callback: NewCallback | None = None  # stored only when the outcome applies (its lease is current)


@dataclass(frozen=True)
class Delivery:
    """A delivery as listed by ``dispatch deliveries``."""

    id: int
    event_uuid: str
    event_type: str
    webhook: str
    status: DeliveryStatus
    attempts: int
    created_at: float
    updated_at: float
    next_attempt_at: float | None
    last_status_code: int | None = None
    last_error: str | None = None
    dead_reason: str | None = None


@dataclass(frozen=True)
class AttemptLog:
    number: int  # 1-based
    started_at: float
    duration_seconds: float
    status_code: int | None
    error: str | None
    response_headers: dict[str, str]
    response_excerpt: str


@dataclass(frozen=True)
class DeliveryDetail:
    delivery: Delivery
    body: bytes
    attempts: tuple[AttemptLog, ...]


@dataclass(frozen=True)
class DeliveryQuery:
    status: DeliveryStatus | None = None
    webhook: str | None = None
    since: float | None = None  # created_at >= since
    limit: int = 100
    delivery_id: int | None = None  # that delivery only (list_callbacks: the callbacks reporting on it)


@dataclass(frozen=True)
class CallbackLease:
    """A stored callback handed to the callback sender until ``expires_at``."""

    callback_id: int
    lease_id: int  # opaque token; an outcome with a stale token is ignored
    expires_at: float
    webhook: str
    url: str
    payload: bytes
    attempts: int  # attempts made so far in the current schedule
    created_at: float


@dataclass(frozen=True)
class CallbackOutcome:
    """The result of one callback lease: DELIVERED, RETRY, DEAD (with an attempt) or RELEASE (without)."""

    callback_id: int
    lease_id: int
    kind: OutcomeKind
    attempt: AttemptRecord | None = None
    next_attempt_at: float | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Callback:
    """A stored callback as listed by ``dispatch callbacks``. The URL is left out (it may hold a token)."""

    id: int
    webhook: str
    delivery_id: int
    label: str
    status: DeliveryStatus  # pending, failed (a retry is scheduled), delivered, dead
    attempts: int
    created_at: float
    updated_at: float
    next_attempt_at: float | None
    last_status_code: int | None = None
    last_error: str | None = None
    dead_reason: str | None = None


@dataclass(frozen=True)
class CallbackDetail:
    callback: Callback
    payload: bytes
    attempts: tuple[AttemptLog, ...]


class Store(Protocol):
    """Durable queue of events and their deliveries. Every method is atomic and thread-safe."""

    def enqueue(
        self,
        events: Sequence[NewEvent],
        now: float,
        lease_seconds: float | None = None,
        unleased: Collection[str] = (),
    ) -> list[EnqueueResult]:
        """Store events and one delivery per routed webhook in one durable transaction.

        Duplicates (uuid already stored) are reported and store nothing. With ``lease_seconds`` the new
        deliveries are created already leased to the caller (hot path: no second write to lease them) and
        returned in ``EnqueueResult.leases``. Deliveries to the webhooks in ``unleased`` are created
        unleased even then (their endpoint is behind: the scheduler leases them when it has room).
        """
        ...

    def lease(self, now: float, limit: int, lease_seconds: float, skip: Collection[str] = ()) -> list[Lease]:
        """Lease up to ``limit`` due deliveries (open status, not held, ``next_attempt_at <= now``, not
        leased), earliest first, passing over those of the webhooks in ``skip`` (their endpoint has enough
        work queued already: they stay due, in order, for a later call)."""
        ...

    def record(self, outcomes: Sequence[Outcome], now: float) -> int:
        """Apply outcomes in one transaction; returns how many applied (stale lease ids are skipped)."""
        ...

    def reclaim_expired(self, now: float) -> int:
        """Make deliveries and callbacks whose lease expired due again; returns how many."""
        ...

    def lease_callbacks(self, now: float, limit: int, lease_seconds: float) -> list[CallbackLease]:
        """Lease up to ``limit`` due callbacks (open, due by ``now``, not leased), earliest first."""
        ...

    def record_callbacks(self, outcomes: Sequence[CallbackOutcome], now: float) -> int:
        """Apply callback outcomes in one transaction; returns how many applied (stale lease ids skipped)."""
        ...

    def next_callback_due_at(self) -> float | None:
        """The earliest ``next_attempt_at`` among open, unleased callbacks, or None."""
        ...

    def list_callbacks(self, query: DeliveryQuery) -> list[Callback]:
        """Callbacks matching the query (status, webhook, created since), newest first."""
        ...

    def get_callback(self, callback_id: int) -> CallbackDetail | None:
        """One callback with its payload and every attempt."""
        ...

    def requeue_callbacks(self, callback_ids: Sequence[int], now: float) -> int:
        """Make the given callbacks (any status but delivered, not leased) due now; attempts restart."""
        ...

    def requeue_dead_callbacks(
        self, now: float, webhook: str | None = None, since: float | None = None
    ) -> int:
        """Make every dead callback (optionally of one webhook, created since a time) due now."""
        ...

    def next_due_at(self) -> float | None:
        """The earliest ``next_attempt_at`` among open, unleased deliveries, or None."""
        ...

    def requeue(self, delivery_ids: Sequence[int], now: float) -> int:
        """Make the given deliveries (any status but delivered) due now; attempts restart from zero."""
        ...

    def requeue_dead(self, now: float, webhook: str | None = None, since: float | None = None) -> int:
        """Make every dead delivery (optionally of one webhook, created since a time) due now."""
        ...

    def release_held(self, webhook: str, now: float) -> int:
        """Make the held deliveries of a webhook (parked while it was inactive) due now."""
        ...

    def bury_webhook(self, webhook: str, reason: str, now: float) -> int:
        """Mark every open, unleased delivery of a webhook (held ones included) dead, e.g. it was removed."""
        ...

    def open_webhooks(self) -> set[str]:
        """Names of webhooks that have open deliveries."""
        ...

    def list_deliveries(self, query: DeliveryQuery) -> list[Delivery]:
        """Deliveries matching the query, newest first."""
        ...

    def get_delivery(self, delivery_id: int) -> DeliveryDetail | None:
        """One delivery with its body and every attempt."""
        ...

    def counts(self) -> dict[DeliveryStatus, int]:
        """Number of deliveries per status (every status present, zero when none)."""
        ...

    def oldest_open_created_at(self) -> float | None:
        """``created_at`` of the oldest open delivery, or None."""
        ...

    def prune(self, now: float, delivered_older_than_seconds: float) -> int:
        """Delete delivered deliveries (with their attempts), delivered callbacks, and events that no longer
        have deliveries, older than the given age; dead ones are kept. Returns deliveries removed."""
        ...

    def close(self) -> None: ...
