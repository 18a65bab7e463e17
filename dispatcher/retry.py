"""When to try again: response classification, ``Retry-After`` and the next delay (SPEC section 5).

Everything here is pure: randomness comes in as a ``random.Random`` and the clock as ``now``. The retry
schedule itself (formulas, defaults, limits) is ``reconciler.retry``, the one ``reconcile --check`` judges;
its names are re-exported here for the dispatcher's callers.
"""

from __future__ import annotations

import email.utils
import random
from datetime import UTC
from typing import Literal

from reconciler.retry import DEFAULT_DELAYS, MAX_DELAY_SECONDS, RetryPolicy, build_retry_policy

__all__ = [
    "MAX_DELAY_SECONDS",
    "RETRY_AFTER_CEILING",
    "Classification",
    "RetryPolicy",
    "build_retry_policy",
    "classify",
    "next_delay",
    "retry_after_seconds",
]

#: A receiver's ``Retry-After`` may push a retry back by at most this much (the default schedule's longest
#: step), so a misconfigured header cannot park a delivery for days.
RETRY_AFTER_CEILING = float(max(DEFAULT_DELAYS))

Classification = Literal["delivered", "retry", "gone"]


def classify(status_code: int) -> Classification:
    """What a response status means for the delivery: 2xx delivered, 410 gone, anything else retried.

    Redirects are not followed and count as failures (Standard Webhooks, Svix, Stripe); 410 is the receiver
    saying the endpoint is gone for good.
    """
    if 200 <= status_code <= 299:
        return "delivered"
    if status_code == 410:
        return "gone"
    return "retry"


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP-date, RFC 9110 section 10.2.3).

    None when absent, unparseable, negative or a date in the past.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isascii() and text.isdigit():
        # float(), not int(): hundreds of digits are inf (the caller's ceiling applies), not an error.
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        # "-0000" (and obsolete zone names) parse as naive; HTTP-dates are always GMT.
        when = when.replace(tzinfo=UTC)
    seconds = when.timestamp() - now
    return seconds if seconds >= 0 else None


def next_delay(
    policy: RetryPolicy, attempts_made: int, retry_after: float | None, rng: random.Random
) -> float | None:
    """The delay before the next attempt, honouring ``Retry-After`` within bounds; None when exhausted.

    A receiver may push the retry later (up to RETRY_AFTER_CEILING) but never earlier than the policy: a
    ``Retry-After: 0`` from an overloaded endpoint must not turn backoff into a tight loop.
    """
    delay = policy.delay_after(attempts_made, rng)
    if delay is None:
        return None
    if retry_after is not None and retry_after > 0:
        delay = max(delay, min(retry_after, RETRY_AFTER_CEILING))
    return delay
