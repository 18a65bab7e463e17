"""When to try again: retry policies, response classification and ``Retry-After`` (SPEC sections 1 and 5).

Everything here is pure: a policy returns a delay in seconds and never sleeps; randomness comes in as a
``random.Random`` and the clock as ``now``.

Retry number ``n`` follows the admin screen: ``n = 0`` is the first retry (the delay after the first failed
attempt), so ``delay_after(attempts_made)`` uses ``n = attempts_made - 1``.
"""

from __future__ import annotations

import email.utils
import math
import random
from dataclasses import dataclass
from datetime import UTC
from typing import Any, Literal

from reconciler.model import RetryConfig

#: Seconds to wait after attempt 1, 2, ... 7 (attempts at 0, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h after
#: the previous one): the Svix / Standard Webhooks schedule, 8 attempts over about 27.6 hours.
DEFAULT_DELAYS: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
DEFAULT_JITTER = 0.2

#: Attempts for the formula choices when ``max_attempts`` is absent: the same count as the default schedule,
#: so switching from the default to a formula does not silently change how long a receiver is given.
DEFAULT_MAX_ATTEMPTS = len(DEFAULT_DELAYS) + 1

#: No single delay exceeds this (7 days): keeps exponential growth finite and a typo from parking a delivery
#: for years.
MAX_DELAY_SECONDS = 7 * 24 * 3600.0

#: A receiver's ``Retry-After`` may push a retry back by at most this much (the default schedule's longest
#: step), so a misconfigured header cannot park a delivery for days.
RETRY_AFTER_CEILING = 36000.0

Choice = Literal["fixed", "linear", "exponential", "random", "schedule"]
Classification = Literal["delivered", "retry", "gone"]


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts to make and how long to wait between them. Build with ``build_retry_policy``.

    Only the fields of ``choice`` matter: fixed uses ``seconds``; linear ``base`` and ``limit``; exponential
    ``base``, ``factor`` and ``limit``; random ``min_value`` and ``max_value``; schedule ``delays``.
    """

    choice: Choice
    max_attempts: int
    jitter: float = 0.0
    seconds: float = 0.0
    base: float = 0.0
    factor: float = 1.0
    limit: float | None = None
    min_value: int = 0
    max_value: int = 0
    delays: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts!r}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be a fraction in [0, 1), got {self.jitter!r}")
        for name in ("seconds", "base", "factor"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)!r}")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"limit must not be negative, got {self.limit!r}")
        if self.choice == "random" and not 0 <= self.min_value <= self.max_value:
            raise ValueError(
                f"random needs 0 <= min_value <= max_value, got {self.min_value!r} and {self.max_value!r}"
            )
        if self.choice == "schedule":
            if not self.delays:
                raise ValueError("schedule needs at least one delay")
            if any(d < 0 for d in self.delays):
                raise ValueError(f"schedule delays must not be negative, got {list(self.delays)!r}")

    def delay_after(self, attempts_made: int, rng: random.Random) -> float | None:
        """Seconds to wait before the next attempt once ``attempts_made`` attempts have failed, or None when
        no attempt is left."""
        if attempts_made < 1:
            raise ValueError(f"attempts_made must be at least 1, got {attempts_made!r}")
        if attempts_made >= self.max_attempts:
            return None
        delay = min(self._base_delay(attempts_made - 1, rng), MAX_DELAY_SECONDS)
        if self.jitter:
            # Spreads retries of deliveries that failed together (an endpoint outage) so they do not all
            # come back in the same second.
            delay *= rng.uniform(1 - self.jitter, 1 + self.jitter)
        return min(max(delay, 0.0), MAX_DELAY_SECONDS)

    def _base_delay(self, n: int, rng: random.Random) -> float:
        if self.choice == "fixed":
            return self.seconds
        if self.choice == "linear":
            return _capped(self.base * n, self.limit)
        if self.choice == "exponential":
            return _capped(_power_times(self.base, n, self.factor), self.limit)
        if self.choice == "random":
            return float(rng.randint(self.min_value, self.max_value))
        # schedule: past the end, the last delay repeats
        return self.delays[min(n, len(self.delays) - 1)]


def _capped(value: float, limit: float | None) -> float:
    return value if limit is None else min(value, limit)


def _power_times(base: float, n: int, factor: float) -> float:
    """``base ** n * factor``, clamped to MAX_DELAY_SECONDS instead of overflowing for large ``n``."""
    try:
        value = float(base) ** n * factor
    except OverflowError:
        return MAX_DELAY_SECONDS
    return value if math.isfinite(value) else MAX_DELAY_SECONDS


def default_retry_policy() -> RetryPolicy:
    """The schedule used when a webhook has no ``retry_countdown_config``."""
    return RetryPolicy(
        choice="schedule",
        max_attempts=DEFAULT_MAX_ATTEMPTS,
        jitter=DEFAULT_JITTER,
        delays=DEFAULT_DELAYS,
    )


def build_retry_policy(config: RetryConfig | None) -> RetryPolicy:
    """The policy for a webhook's ``retry_countdown_config`` (None = the default schedule).

    Raises ValueError naming the choice and key when the kwargs do not fit the choice (the schema normally
    catches this first).
    """
    if config is None:
        return default_retry_policy()
    kwargs = config.kwargs
    choice = config.choice
    common: dict[str, Any] = {"choice": choice, "jitter": float(config.jitter)}
    if choice == "fixed":
        fields: dict[str, Any] = {"seconds": _number(kwargs, choice, "seconds")}
    elif choice == "linear":
        fields = {"base": _number(kwargs, choice, "base"), "limit": _number(kwargs, choice, "limit", None)}
    elif choice == "exponential":
        fields = {
            "base": _number(kwargs, choice, "base"),
            "factor": _number(kwargs, choice, "factor", 1.0),
            "limit": _number(kwargs, choice, "limit", None),
        }
    elif choice == "random":
        fields = {
            "min_value": int(_number(kwargs, choice, "min_value")),
            "max_value": int(_number(kwargs, choice, "max_value")),
        }
    elif choice == "schedule":
        delays = kwargs.get("delays")
        if not isinstance(delays, list | tuple) or not all(_is_number(d) for d in delays):
            raise ValueError(f"retry choice 'schedule' needs 'delays': a list of seconds, got {delays!r}")
        fields = {"delays": tuple(float(d) for d in delays)}
    else:
        raise ValueError(f"unknown retry choice {choice!r}")
    if config.max_attempts is not None:
        max_attempts = config.max_attempts
    elif choice == "schedule":
        max_attempts = len(fields["delays"]) + 1
    else:
        max_attempts = DEFAULT_MAX_ATTEMPTS
    return RetryPolicy(max_attempts=max_attempts, **common, **fields)


_MISSING: Any = object()


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(kwargs: dict[str, Any], choice: str, key: str, default: Any = _MISSING) -> Any:
    value = kwargs.get(key, default)
    if value is _MISSING:
        raise ValueError(f"retry choice {choice!r} needs {key!r}")
    if value is not None and not _is_number(value):
        raise ValueError(f"retry choice {choice!r}: {key!r} must be a number, got {value!r}")
    return None if value is None else float(value)


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
