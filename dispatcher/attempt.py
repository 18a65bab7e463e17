"""One delivery attempt, as pure decisions around a single HTTP call.

``prepare`` turns a lease and the current webhook definition into a request (signed for this attempt);
``decide`` turns what the attempt did into the store outcome. Neither sleeps nor reads the clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from dispatcher.config import Snapshot
from dispatcher.outbound import OutboundRequest
from dispatcher.retry import classify, next_delay, retry_after_seconds
from dispatcher.signing import delivery_headers
from dispatcher.store.base import AttemptRecord, Lease, Outcome, OutcomeKind
from reconciler.model import BasicAuth, SecretRef, Webhook


def endpoint_key(url: str) -> str:
    """The unit of per-endpoint concurrency: scheme, host and port of a target URL."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


def prepare(
    lease: Lease, hook: Webhook, snapshot: Snapshot, timestamp: int, token: str | None = None
) -> OutboundRequest:
    """The request for this attempt: delivery headers, then additional headers, then auth.

    ``token`` is the Authorization value obtained by the token flow (``config.auth.type: token``). Raises
    SecretError, before anything is sent, when a secret it needs was refused or could not be resolved (the
    engine records that as the attempt's error).
    """
    secret = snapshot.secret(hook.secret_key) if hook.secret_key is not None else None
    headers = delivery_headers(
        event_type=lease.event_type,
        msg_id=lease.event_uuid,
        timestamp=timestamp,
        body=lease.body,
        secret=secret,
    )
    for name, value in hook.additional_headers.items():
        headers[name] = snapshot.secret(value) if isinstance(value, SecretRef) else value
    basic: tuple[str, str] | None = None
    if isinstance(hook.auth, BasicAuth):
        basic = (hook.auth.username, snapshot.secret(hook.auth.password))
    elif token is not None:
        headers["Authorization"] = token
    return OutboundRequest(
        url=hook.target_url,
        body=lease.body,
        headers=headers,
        timeout_seconds=hook.timeout_seconds,
        basic_auth=basic,
    )


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    # "delivered" | "failed" | "dead": the outcome's name in ``callback.on`` and in the callback record
    # ("failed": an attempt failed and a retry is scheduled). The deliveries metric keeps the kind ("retry").
    label: str


def decide(lease: Lease, hook: Webhook, record: AttemptRecord, rng: random.Random, now: float) -> Decision:
    """Turn one attempt's record into delivered, failed (a retry, with its time) or dead (with its reason)."""
    attempts_made = lease.attempts + 1
    if record.status_code is not None:
        verdict = classify(record.status_code)
        if verdict == "delivered":
            return Decision(_outcome(lease, OutcomeKind.DELIVERED, record), "delivered")
        if verdict == "gone":
            return Decision(_outcome(lease, OutcomeKind.DEAD, record, reason="410 Gone"), "dead")
    retry_after = retry_after_seconds(record.response_headers.get("Retry-After"), now)
    delay = next_delay(hook.retry_policy, attempts_made, retry_after, rng)
    if delay is None:
        reason = f"max attempts reached ({attempts_made})"
        return Decision(_outcome(lease, OutcomeKind.DEAD, record, reason=reason), "dead")
    return Decision(_outcome(lease, OutcomeKind.RETRY, record, next_attempt_at=now + delay), "failed")


def _outcome(
    lease: Lease,
    kind: OutcomeKind,
    record: AttemptRecord | None,
    *,
    next_attempt_at: float | None = None,
    reason: str | None = None,
) -> Outcome:
    return Outcome(lease.delivery_id, lease.lease_id, kind, record, next_attempt_at, reason)


def without_attempt(
    lease: Lease, kind: OutcomeKind, *, next_attempt_at: float | None = None, reason: str | None = None
) -> Outcome:
    """An outcome that made no HTTP attempt (held, released, or dead because the webhook is gone)."""
    return _outcome(lease, kind, None, next_attempt_at=next_attempt_at, reason=reason)


def callback_payload(lease: Lease, hook: Webhook, decision: Decision, now: float) -> dict[str, Any]:
    """The JSON outcome record POSTed to a webhook's ``callback.url``. Holds no secret and no body."""
    attempt = decision.outcome.attempt
    return {
        "webhook": hook.name,
        "event": {"type": lease.event_type, "uuid": lease.event_uuid},
        "delivery_id": lease.delivery_id,
        "outcome": decision.label,
        "attempts": lease.attempts + 1,
        "status_code": attempt.status_code if attempt else None,
        "error": attempt.error if attempt else None,
        "reason": decision.outcome.reason,
        "next_attempt_at": decision.outcome.next_attempt_at,
        "timestamp": now,
    }
