"""The one retry schedule (reconciler/retry.py): what reconcile asks of it beyond the dispatcher's delays."""

from __future__ import annotations

import random
from typing import Any

import pytest

from reconciler.model import RetryConfig, Webhook
from reconciler.retry import DEFAULT_POLICY, MAX_DELAY_SECONDS, build_policy, build_retry_policy

CONFIGS: list[tuple[str, dict[str, Any], int]] = [
    ("fixed", {"seconds": 90}, 5),
    ("linear", {"base": 3600}, 30),
    ("linear", {"base": 3600, "limit": 7200}, 30),
    ("exponential", {"base": 3, "factor": 2, "limit": 5000}, 30),
    ("random", {"min_value": 5, "max_value": 50}, 6),
    ("schedule", {"delays": [1, 900, 30]}, 9),
]


@pytest.mark.parametrize(("choice", "kwargs", "attempts"), CONFIGS)
def test_the_cheap_bound_holds_every_nominal_delay(
    choice: str, kwargs: dict[str, Any], attempts: int
) -> None:
    """``largest_delay_bound`` is never below a delay the policy really produces (the rule skips on it)."""
    policy = build_policy(choice, kwargs, attempts)
    assert max(policy.nominal_delays()) <= policy.largest_delay_bound()


def test_an_unlimited_exponential_has_no_cheap_bound() -> None:
    """Without a limit only computing the delays can tell, so the bound is infinite."""
    assert build_policy("exponential", {"base": 2}, 5).largest_delay_bound() == float("inf")


@pytest.mark.parametrize(("choice", "kwargs", "attempts"), CONFIGS)
def test_nominal_delays_are_the_most_the_dispatcher_waits(
    choice: str, kwargs: dict[str, Any], attempts: int
) -> None:
    """Without jitter each delay the dispatcher draws is at most the nominal one (equal unless random)."""
    policy = build_policy(choice, kwargs, attempts)
    rng = random.Random(3)
    waits = [policy.delay_after(made, rng) for made in range(1, attempts)]
    for wait, nominal in zip(waits, policy.nominal_delays(), strict=True):
        assert wait is not None and wait <= nominal
        assert wait == nominal or choice == "random"


def test_nominal_delays_stay_finite_far_past_the_bound() -> None:
    """An exponential that overflows a float is held at a finite value above MAX_DELAY_SECONDS."""
    delays = build_policy("exponential", {"base": 1e300}, 100).nominal_delays()
    assert all(d < float("inf") for d in delays) and delays[-1] > MAX_DELAY_SECONDS


def test_jitter_one_spreads_a_delay_over_zero_to_twice() -> None:
    """jitter 1, the schema's largest, is accepted and keeps every delay within [0, 2x]."""
    policy = build_policy("fixed", {"seconds": 100}, 2, jitter=1)
    draws = [policy.delay_after(1, random.Random(seed)) for seed in range(200)]
    assert all(d is not None and 0 <= d <= 200 for d in draws)


def test_equal_configs_share_one_policy_and_no_config_is_the_default() -> None:
    """Building twice gives the same object; a webhook without config holds the default schedule."""
    config = RetryConfig("linear", {"base": 60}, max_attempts=4)
    assert build_retry_policy(config) is build_retry_policy(
        RetryConfig("linear", {"base": 60}, max_attempts=4)
    )
    assert Webhook("w", "https://a.example.com/h", ("t",)).retry_policy is DEFAULT_POLICY


def test_a_webhook_with_a_config_that_does_not_fit_is_refused() -> None:
    """A Webhook value cannot hold a retry config its schedule cannot follow (named in the error)."""
    with pytest.raises(ValueError, match="min_value"):
        Webhook(
            "w",
            "https://a.example.com/h",
            ("t",),
            retry=RetryConfig("random", {"min_value": 9, "max_value": 1}),
        )
