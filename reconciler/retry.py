"""The retry schedule: the admin screen's countdown formulas and their limits, once (SPEC sections 1, 5).

``reconcile`` asks a ``RetryPolicy`` for its delays to judge a config (``retry-bounds``); the dispatcher asks
the same policy, built once per webhook when the tree is loaded (``Webhook.retry_policy``), how long to wait.
Everything here is pure: a policy returns a delay in seconds and never sleeps; randomness comes in as a
``random.Random``.

Retry number ``n`` follows the admin screen: ``n = 0`` is the first retry (the delay after the first failed
attempt), so ``delay_after(attempts_made)`` uses ``n = attempts_made - 1``.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

if TYPE_CHECKING:  # reconciler.model imports this module: the config is only read, never constructed here
    from reconciler.model import RetryConfig

#: Seconds to wait after attempt 1, 2, ... 7 (attempts at 0, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h after
#: the previous one): the Svix / Standard Webhooks schedule, 8 attempts over about 27.6 hours.
DEFAULT_DELAYS: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
DEFAULT_JITTER = 0.2

#: Attempts for the formula choices when ``max_attempts`` is absent: the same count as the default schedule,
#: so switching from the default to a formula does not silently change how long a receiver is given.
DEFAULT_MAX_ATTEMPTS = len(DEFAULT_DELAYS) + 1

#: No single delay may exceed this (7 days): ``reconcile`` rejects a config that asks for more, and the
#: dispatcher never waits longer (exponential growth stays finite; a typo cannot park a delivery for years).
MAX_DELAY_SECONDS = 7 * 24 * 3600.0

#: All the retries of one delivery together may not span more than this (30 days): past a month a delivery is
#: stale for any receiver.
MAX_SCHEDULE_SECONDS = 30 * 24 * 3600.0

#: Nominal delays are held at this, far above MAX_DELAY_SECONDS, so ``base ** n`` never grows without bound
#: while a message can still say how far over the limit a config goes.
_NOMINAL_CAP = MAX_DELAY_SECONDS * 1000

Choice = Literal["fixed", "linear", "exponential", "random", "schedule"]


@dataclass(frozen=True, slots=True)
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
        if not 0 <= self.jitter <= 1:  # the schema's bounds: 1 spreads a delay over [0, 2x]
            raise ValueError(f"jitter must be a fraction in [0, 1], got {self.jitter!r}")
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

    def nominal_delay(self, n: int) -> float:
        """The delay of retry ``n`` by the formula, before jitter and the dispatcher's ceiling; for random
        the largest it can draw."""
        if self.choice == "fixed":
            return min(self.seconds, _NOMINAL_CAP)
        if self.choice == "linear":
            return min(_capped(self.base * n, self.limit), _NOMINAL_CAP)
        if self.choice == "exponential":
            return min(_capped(_power_times(self.base, n, self.factor), self.limit), _NOMINAL_CAP)
        if self.choice == "random":
            return float(min(self.max_value, _NOMINAL_CAP))
        # schedule: past the end, the last delay repeats
        return min(self.delays[min(n, len(self.delays) - 1)], _NOMINAL_CAP)

    def nominal_delays(self) -> tuple[float, ...]:
        """``nominal_delay`` of every retry the policy makes (``max_attempts - 1`` of them)."""
        return tuple(self.nominal_delay(n) for n in range(self.max_attempts - 1))

    def largest_delay_bound(self) -> float:
        """A cheap upper bound of every nominal delay (infinite when only computing them can tell)."""
        if self.choice == "fixed":
            return self.seconds
        if self.choice == "linear":
            largest = self.base * max(self.max_attempts - 2, 0)
            return _capped(largest, self.limit)
        if self.choice == "exponential":
            return float("inf") if self.limit is None else self.limit
        if self.choice == "random":
            return float(self.max_value)
        return max(self.delays)

    def delay_after(self, attempts_made: int, rng: random.Random) -> float | None:
        """Seconds to wait before the next attempt once ``attempts_made`` attempts have failed, or None when
        no attempt is left."""
        if attempts_made < 1:
            raise ValueError(f"attempts_made must be at least 1, got {attempts_made!r}")
        if attempts_made >= self.max_attempts:
            return None
        n = attempts_made - 1
        drawn = float(rng.randint(self.min_value, self.max_value)) if self.choice == "random" else None
        delay = min(self.nominal_delay(n) if drawn is None else drawn, MAX_DELAY_SECONDS)
        if self.jitter:
            # Spreads retries of deliveries that failed together (an endpoint outage) so they do not all
            # come back in the same second.
            delay *= rng.uniform(1 - self.jitter, 1 + self.jitter)
        return min(max(delay, 0.0), MAX_DELAY_SECONDS)


def _capped(value: float, limit: float | None) -> float:
    return value if limit is None else min(value, limit)


def _power_times(base: float, n: int, factor: float) -> float:
    """``base ** n * factor``, held at the nominal cap instead of overflowing for large ``n``."""
    try:
        value = float(base) ** n * factor
    except OverflowError:
        return _NOMINAL_CAP
    return value if math.isfinite(value) else _NOMINAL_CAP


#: The schedule used when a webhook has no ``retry_countdown_config`` (and by outcome callbacks).
DEFAULT_POLICY = RetryPolicy(
    choice="schedule", max_attempts=DEFAULT_MAX_ATTEMPTS, jitter=DEFAULT_JITTER, delays=DEFAULT_DELAYS
)


def build_retry_policy(config: RetryConfig | None) -> RetryPolicy:
    """The policy for a webhook's ``retry_countdown_config`` (None = the default schedule).

    Raises ValueError naming the choice and key when the kwargs do not fit the choice (the schema normally
    catches this first). Equal configs give the one shared policy.
    """
    if config is None:
        return DEFAULT_POLICY
    return build_policy(config.choice, config.kwargs, config.max_attempts, config.jitter)


def build_policy(
    choice: str, kwargs: Mapping[str, Any], max_attempts: int | None = None, jitter: float = 0.0
) -> RetryPolicy:
    """The policy of a countdown ``choice`` and its ``kwargs`` (``max_attempts`` None: the choice's default).

    Raises ValueError naming the choice and key when the kwargs do not fit the choice.
    """
    common: dict[str, Any] = {"jitter": float(jitter)}
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
    if max_attempts is None:
        max_attempts = len(fields["delays"]) + 1 if choice == "schedule" else DEFAULT_MAX_ATTEMPTS
    return _one_copy(RetryPolicy(cast(Choice, choice), max_attempts, **common, **fields))


def build_retry_delays(choice: str, kwargs: Mapping[str, Any], max_attempts: int) -> tuple[float, ...]:
    """The nominal delay before each retry (``max_attempts - 1`` of them): admin-screen semantics, the
    largest for random, held far above ``MAX_DELAY_SECONDS`` so that ``base ** n`` stays finite.

    Raises ValueError when the kwargs do not fit the choice.
    """
    return build_policy(choice, kwargs, max_attempts).nominal_delays()


@functools.lru_cache(maxsize=1024)
def _one_copy(policy: RetryPolicy) -> RetryPolicy:
    """The first equal policy seen: a loaded tree keeps one per distinct config, not one per webhook."""
    return policy


_MISSING: Any = object()


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(kwargs: Mapping[str, Any], choice: str, key: str, default: Any = _MISSING) -> Any:
    value = kwargs.get(key, default)
    if value is _MISSING:
        raise ValueError(f"retry choice {choice!r} needs {key!r}")
    if value is not None and not _is_number(value):
        raise ValueError(f"retry choice {choice!r}: {key!r} must be a number, got {value!r}")
    return None if value is None else float(value)
