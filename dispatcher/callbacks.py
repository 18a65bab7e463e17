"""Outcome callbacks as pure decisions: what to store with an outcome, what to send, what an answer means.

A callback is built by the outcome writer and stored in the transaction that records the outcome it reports
(``Outcome.callback``), so an outcome on disk is a callback that will be sent, even after ``kill -9``. The
engine's callback sender leases stored callbacks, POSTs them through the same HTTP client as deliveries
(egress guard, the webhook's timeout, the delivery processes) and records the answer here: any 2xx
delivers, ``410 Gone`` stops, anything else is retried on the default schedule (0, 5 s, 5 min, 30 min, 2 h,
5 h, 10 h, 10 h, +-20 % jitter) with ``Retry-After`` honoured like a delivery's; after the last attempt the
callback is dead (listable, retryable with ``dispatch callbacks retry``).

Every callback carries a ``callback_id`` (a random 32-hex id, in the body and in the ``webhook-id`` header),
the same on every attempt: the receiver deduplicates on it (a callback in flight at a crash is sent again).
"""

from __future__ import annotations

import json
import random
import uuid
from typing import Any

from dispatcher.attempt import Decision, callback_payload
from dispatcher.outbound import OutboundRequest
from dispatcher.retry import classify, next_delay, retry_after_seconds
from dispatcher.store.base import (
    AttemptRecord,
    CallbackLease,
    CallbackOutcome,
    Lease,
    NewCallback,
    OutcomeKind,
)
from reconciler.model import Webhook
from reconciler.retry import DEFAULT_POLICY

#: Timeout of a callback whose webhook is gone from the table (its own timeout is no longer known).
DEFAULT_TIMEOUT_SECONDS = 10.0


def new_callback_id() -> str:
    """A fresh callback id: 32 lowercase hex digits, unique across stores and restarts."""
    return uuid.uuid4().hex


def build_callback(
    lease: Lease, hook: Webhook, decision: Decision, now: float, callback_id: str
) -> NewCallback | None:
    """The callback to store with this decision, or None when the webhook does not ask for its outcome."""
    if hook.callback is None or decision.label not in hook.callback.on:
        return None
    payload: dict[str, Any] = {"callback_id": callback_id, **callback_payload(lease, hook, decision, now)}
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return NewCallback(webhook=hook.name, url=hook.callback.url, label=decision.label, payload=body)


def callback_id_of(payload: bytes) -> str:
    """The ``callback_id`` in a stored payload ("" when it has none)."""
    try:
        doc = json.loads(payload)
    except ValueError:
        return ""
    value = doc.get("callback_id") if isinstance(doc, dict) else None
    return value if isinstance(value, str) else ""


def callback_request(lease: CallbackLease, hook: Webhook | None) -> OutboundRequest:
    """The POST for one callback attempt: the stored payload, the same bytes every time.

    The webhook's current ``callback.url`` and timeout apply when it still has them (fixing a URL in Git
    unblocks pending callbacks, as for deliveries); else the URL stored with the callback.
    """
    url = hook.callback.url if hook is not None and hook.callback is not None else lease.url
    timeout = hook.timeout_seconds if hook is not None else DEFAULT_TIMEOUT_SECONDS
    headers = {"Content-Type": "application/json"}
    callback_id = callback_id_of(lease.payload)
    if callback_id:
        headers["webhook-id"] = callback_id
    return OutboundRequest(url, lease.payload, headers, timeout)


def decide_callback(
    lease: CallbackLease, record: AttemptRecord, rng: random.Random, now: float
) -> CallbackOutcome:
    """Delivered on a 2xx, dead on 410 or after the last attempt of the default schedule, else a retry."""
    key = (lease.callback_id, lease.lease_id)
    if record.status_code is not None:
        verdict = classify(record.status_code)
        if verdict == "delivered":
            return CallbackOutcome(*key, OutcomeKind.DELIVERED, record)
        if verdict == "gone":
            return CallbackOutcome(*key, OutcomeKind.DEAD, record, reason="410 Gone")
    attempts_made = lease.attempts + 1
    retry_after = retry_after_seconds(record.response_headers.get("Retry-After"), now)
    delay = next_delay(DEFAULT_POLICY, attempts_made, retry_after, rng)
    if delay is None:
        return CallbackOutcome(
            *key, OutcomeKind.DEAD, record, reason=f"max attempts reached ({attempts_made})"
        )
    return CallbackOutcome(*key, OutcomeKind.RETRY, record, next_attempt_at=now + delay)
