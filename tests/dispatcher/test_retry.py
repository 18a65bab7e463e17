from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import pytest

from dispatcher.retry import (
    MAX_DELAY_SECONDS,
    RETRY_AFTER_CEILING,
    RetryPolicy,
    build_retry_policy,
    classify,
    next_delay,
    retry_after_seconds,
)
from reconciler.model import RetryConfig

HOUR = 3600


def policy(
    choice: Any, kwargs: dict[str, Any], max_attempts: int | None = None, jitter: float = 0.0
) -> RetryPolicy:
    return build_retry_policy(
        RetryConfig(choice=choice, kwargs=kwargs, max_attempts=max_attempts, jitter=jitter)
    )


def delays(p: RetryPolicy, seed: int = 1) -> list[float | None]:
    rng = random.Random(seed)
    return [p.delay_after(made, rng) for made in range(1, p.max_attempts + 1)]


def test_default_schedule_without_jitter_matches_the_spec() -> None:
    """Without config: attempts at 0, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h after the previous (8)."""
    default = build_retry_policy(None)
    assert default.max_attempts == 8
    assert default.jitter == 0.2
    unjittered = RetryPolicy(choice="schedule", max_attempts=8, delays=default.delays)
    assert delays(unjittered) == [5, 300, 1800, 2 * HOUR, 5 * HOUR, 10 * HOUR, 10 * HOUR, None]


def test_default_schedule_stays_within_twenty_percent_jitter() -> None:
    """Every jittered default delay lies within +-20 % of the nominal step, across many random streams."""
    nominal = [5, 300, 1800, 2 * HOUR, 5 * HOUR, 10 * HOUR, 10 * HOUR]
    default = build_retry_policy(None)
    seen_low = seen_high = False
    for seed in range(300):
        rng = random.Random(seed)
        for made, step in enumerate(nominal, start=1):
            d = default.delay_after(made, rng)
            assert d is not None
            assert step * 0.8 <= d <= step * 1.2
            seen_low |= d < step
            seen_high |= d > step
    assert seen_low and seen_high  # jitter goes both ways


def test_default_schedule_is_exhausted_after_eight_attempts() -> None:
    """After the 8th failed attempt there is no further delay."""
    assert build_retry_policy(None).delay_after(8, random.Random(0)) is None
    assert build_retry_policy(None).delay_after(9, random.Random(0)) is None


@pytest.mark.parametrize(
    ("choice", "kwargs", "expected"),
    [
        ("fixed", {"seconds": 60}, [60, 60, 60, 60]),
        ("linear", {"base": 10}, [0, 10, 20, 30]),
        ("linear", {"base": 10, "limit": 25}, [0, 10, 20, 25]),
        ("exponential", {"base": 2}, [1, 2, 4, 8]),
        ("exponential", {"base": 2, "factor": 30}, [30, 60, 120, 240]),
        ("exponential", {"base": 2, "factor": 30, "limit": 100}, [30, 60, 100, 100]),
        ("exponential", {"base": 3, "factor": 1.5}, [1.5, 4.5, 13.5, 40.5]),
        ("schedule", {"delays": [1, 2, 3, 4]}, [1, 2, 3, 4]),
    ],
)
def test_choices_follow_the_admin_screen_formulas(
    choice: str, kwargs: dict[str, Any], expected: list[float]
) -> None:
    """Retry number n = 0, 1, 2, 3 gives the admin screen's delay for each choice."""
    p = policy(choice, kwargs, max_attempts=5)
    assert delays(p)[:4] == expected


def test_random_choice_draws_integers_in_the_range() -> None:
    """random{min_value, max_value} draws an integer in the closed range, reaching both ends."""
    p = policy("random", {"min_value": 3, "max_value": 6}, max_attempts=2)
    rng = random.Random(7)
    values = {p.delay_after(1, rng) for _ in range(400)}
    assert values == {3, 4, 5, 6}


def test_schedule_repeats_its_last_delay_when_max_attempts_exceeds_it() -> None:
    """With more attempts than delays, the last delay repeats."""
    p = policy("schedule", {"delays": [5, 50]}, max_attempts=5)
    assert delays(p) == [5, 50, 50, 50, None]


@pytest.mark.parametrize(
    ("choice", "kwargs", "expected"),
    [
        ("schedule", {"delays": [1, 2, 3]}, 4),
        ("fixed", {"seconds": 1}, 8),
        ("linear", {"base": 1}, 8),
        ("exponential", {"base": 2}, 8),
        ("random", {"min_value": 1, "max_value": 2}, 8),
    ],
)
def test_default_max_attempts_per_choice(choice: str, kwargs: dict[str, Any], expected: int) -> None:
    """Without max_attempts: a schedule makes len(delays)+1 attempts, the formulas 8 (the default's count)."""
    assert policy(choice, kwargs).max_attempts == expected


def test_max_attempts_counts_the_first_attempt() -> None:
    """max_attempts 3 allows two retries: delays after attempts 1 and 2, none after 3."""
    assert delays(policy("fixed", {"seconds": 9}, max_attempts=3)) == [9, 9, None]


def test_max_attempts_one_never_retries() -> None:
    """max_attempts 1 means the first failure is final."""
    assert policy("fixed", {"seconds": 9}, max_attempts=1).delay_after(1, random.Random(0)) is None


def test_configured_jitter_applies_to_formula_choices() -> None:
    """A configured jitter multiplies the delay by a factor in [1-f, 1+f]."""
    p = policy("fixed", {"seconds": 100}, max_attempts=2, jitter=0.5)
    values = [p.delay_after(1, random.Random(seed)) for seed in range(200)]
    assert all(v is not None and 50 <= v <= 150 for v in values)
    assert len(set(values)) > 100


def test_configured_policies_have_no_jitter_unless_asked() -> None:
    """A configured schedule without jitter gives its exact delays."""
    p = policy("schedule", {"delays": [7]}, max_attempts=3)
    assert {p.delay_after(1, random.Random(seed)) for seed in range(20)} == {7}


def test_exponential_growth_is_clamped_instead_of_overflowing() -> None:
    """A huge retry number yields the hard ceiling, never OverflowError or infinity."""
    p = policy("exponential", {"base": 10, "factor": 1e300}, max_attempts=100_000)
    assert p.delay_after(50_000, random.Random(0)) == MAX_DELAY_SECONDS
    p = policy("exponential", {"base": 2}, max_attempts=100_000)
    assert p.delay_after(99_999, random.Random(0)) == MAX_DELAY_SECONDS


def test_every_delay_is_capped_at_the_hard_ceiling() -> None:
    """Even an explicit fixed delay of a year is capped at 7 days."""
    assert (
        policy("fixed", {"seconds": 365 * 86400}, max_attempts=2).delay_after(1, random.Random(0))
        == 7 * 86400
    )


@pytest.mark.parametrize(
    ("choice", "kwargs", "max_attempts", "jitter", "fragment"),
    [
        ("fixed", {}, None, 0.0, "'seconds'"),
        ("fixed", {"seconds": "ten"}, None, 0.0, "must be a number"),
        ("fixed", {"seconds": -1}, None, 0.0, "seconds must not be negative"),
        ("linear", {"limit": 3}, None, 0.0, "'base'"),
        ("random", {"min_value": 5, "max_value": 1}, None, 0.0, "min_value <= max_value"),
        ("schedule", {"delays": []}, None, 0.0, "at least one delay"),
        ("schedule", {"delays": "5,10"}, None, 0.0, "'delays'"),
        ("fixed", {"seconds": 1}, 0, 0.0, "max_attempts must be at least 1, got 0"),
        ("fixed", {"seconds": 1}, None, 1.5, "jitter"),
    ],
)
def test_bad_configs_are_refused_naming_the_value(
    choice: str, kwargs: dict[str, Any], max_attempts: int | None, jitter: float, fragment: str
) -> None:
    """A config that does not fit its choice raises ValueError naming the key or value."""
    with pytest.raises(ValueError, match=None) as info:
        policy(choice, kwargs, max_attempts=max_attempts, jitter=jitter)
    assert fragment in str(info.value)


def test_delay_after_needs_at_least_one_attempt() -> None:
    """Asking for a delay before any attempt was made is a programming error."""
    with pytest.raises(ValueError, match="attempts_made"):
        build_retry_policy(None).delay_after(0, random.Random(0))


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, "delivered"),
        (201, "delivered"),
        (204, "delivered"),
        (299, "delivered"),
        (301, "retry"),
        (302, "retry"),
        (304, "retry"),
        (400, "retry"),
        (401, "retry"),
        (404, "retry"),
        (408, "retry"),
        (410, "gone"),
        (429, "retry"),
        (500, "retry"),
        (503, "retry"),
        (100, "retry"),
    ],
)
def test_classify(status: int, expected: str) -> None:
    """2xx is delivered, 410 stops retrying, everything else (3xx, 408, 429, 4xx, 5xx) is retried."""
    assert classify(status) == expected


NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("Sun, 01 Mar 2026 12:01:30 GMT", 90.0),  # IMF-fixdate
        ("Sunday, 01-Mar-26 12:00:10 GMT", 10.0),  # obsolete RFC 850 form
        ("Sun Mar  1 13:00:00 2026", 3600.0),  # obsolete asctime form (no zone: GMT)
        ("Sun, 01 Mar 2026 11:59:00 GMT", None),  # in the past
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_forms(value: str | None, expected: float | None) -> None:
    """Retry-After is delta-seconds or an HTTP-date; absent, invalid, negative or past values give None."""
    assert retry_after_seconds(value, NOW) == expected


def test_retry_after_date_matches_an_independently_formatted_date() -> None:
    """An HTTP-date formatted by the standard library for now + 300 s reads back as 300 s."""
    value = format_datetime(datetime.fromtimestamp(NOW + 300, UTC), usegmt=True)
    assert retry_after_seconds(value, NOW) == 300.0


FIXED_60 = RetryPolicy(choice="fixed", max_attempts=3, seconds=60)


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        (None, 60.0),
        (10.0, 60.0),  # never earlier than the policy
        (0.0, 60.0),
        (600.0, 600.0),  # later when the receiver asks
        (10 * 86400.0, RETRY_AFTER_CEILING),  # but within bounds
    ],
)
def test_next_delay_honours_retry_after_within_bounds(retry_after: float | None, expected: float) -> None:
    """Retry-After can push a retry later, up to 10 h, but never earlier than the policy's delay."""
    assert next_delay(FIXED_60, 1, retry_after, random.Random(0)) == expected


def test_next_delay_is_none_when_attempts_are_exhausted_even_with_retry_after() -> None:
    """Retry-After does not add attempts beyond max_attempts."""
    assert next_delay(FIXED_60, 3, 120.0, random.Random(0)) is None


def test_retry_after_ceiling_is_the_default_schedules_longest_step() -> None:
    """The Retry-After ceiling equals the longest step of the default schedule (10 h)."""
    assert RETRY_AFTER_CEILING == 10 * HOUR == max(build_retry_policy(None).delays)
