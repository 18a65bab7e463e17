"""Outcome callbacks as pure decisions: what is stored, what is sent, what an answer means."""

from __future__ import annotations

import json
import random

from dispatcher.attempt import decide
from dispatcher.callbacks import build_callback, callback_request, decide_callback
from dispatcher.store.base import AttemptRecord, CallbackLease, Lease, OutcomeKind
from reconciler.model import Callback, Webhook

NOW = 50_000.0
HOOK = Webhook(
    name="erp",
    target_url="https://erp.example.com/h",
    event_types=("*",),
    timeout_seconds=4,
    callback=Callback(url="https://oms.example.com/outcomes", on=frozenset({"failed", "dead"})),
)
LEASE = Lease(7, 3, NOW + 60, "ab" * 16, "package.created", "erp", b'{"secret-ish": "body"}', 0, NOW)


def a_record(status_code: int | None, **headers: str) -> AttemptRecord:
    return AttemptRecord(
        started_at=NOW, duration_seconds=0.1, status_code=status_code, response_headers=headers
    )


def a_callback_lease(
    attempts: int = 0, payload: bytes = b'{"callback_id":"' + b"cd" * 16 + b'"}'
) -> CallbackLease:
    return CallbackLease(11, 5, NOW + 60, "erp", "https://stored.example.com/o", payload, attempts, NOW)


def test_a_failed_attempt_with_a_retry_is_labelled_failed_and_builds_a_failed_callback() -> None:
    """decide labels a retried failure "failed" (the name callback.on uses); the stored payload says so."""
    decision = decide(LEASE, HOOK, a_record(500), random.Random(1), NOW)
    assert decision.outcome.kind is OutcomeKind.RETRY and decision.label == "failed"
    callback = build_callback(LEASE, HOOK, decision, NOW, "ef" * 16)
    assert callback is not None and (callback.label, callback.url) == (
        "failed",
        "https://oms.example.com/outcomes",
    )
    doc = json.loads(callback.payload)
    assert doc["callback_id"] == "ef" * 16 and doc["outcome"] == "failed" and doc["status_code"] == 500
    assert b"secret-ish" not in callback.payload


def test_an_outcome_not_listed_in_callback_on_builds_nothing() -> None:
    """A delivered outcome with callback.on [failed, dead] stores no callback."""
    decision = decide(LEASE, HOOK, a_record(204), random.Random(1), NOW)
    assert decision.label == "delivered" and build_callback(LEASE, HOOK, decision, NOW, "ef" * 16) is None


def test_the_request_carries_the_stored_bytes_and_the_callback_id_as_webhook_id() -> None:
    """The POST is the stored payload with webhook-id = callback_id, to the current URL and timeout."""
    lease = a_callback_lease()
    request = callback_request(lease, HOOK)
    assert (request.url, request.body, request.timeout_seconds) == (
        "https://oms.example.com/outcomes",
        lease.payload,
        4,
    )
    assert request.headers == {"Content-Type": "application/json", "webhook-id": "cd" * 16}
    assert callback_request(lease, None).url == "https://stored.example.com/o"


def test_callback_answers_deliver_stop_or_retry_on_the_default_schedule() -> None:
    """2xx delivers, 410 is dead at once, a connection error retries after 5 s +-20 %, Retry-After pushes
    the retry later, and the 8th failed attempt is dead."""
    rng = random.Random(3)
    assert decide_callback(a_callback_lease(), a_record(202), rng, NOW).kind is OutcomeKind.DELIVERED
    gone = decide_callback(a_callback_lease(), a_record(410), rng, NOW)
    assert (gone.kind, gone.reason) == (OutcomeKind.DEAD, "410 Gone")
    retry = decide_callback(a_callback_lease(), a_record(None), rng, NOW)
    assert retry.kind is OutcomeKind.RETRY and retry.next_attempt_at is not None
    assert NOW + 4 <= retry.next_attempt_at <= NOW + 6
    later = decide_callback(a_callback_lease(), a_record(503, **{"Retry-After": "120"}), rng, NOW)
    assert later.next_attempt_at == NOW + 120
    last = decide_callback(a_callback_lease(attempts=7), a_record(500), rng, NOW)
    assert (last.kind, last.reason) == (OutcomeKind.DEAD, "max attempts reached (8)")
