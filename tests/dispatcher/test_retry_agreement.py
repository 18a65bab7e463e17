"""``reconcile --check`` and the dispatcher agree on every retry config: one schedule, judged and followed.

Each config goes through reconcile's per-file check (schema and rules, as ``reconcile --check`` runs them);
a legal one is then loaded as the dispatcher loads it and failed attempt after attempt through
``attempt.decide``, and the delays the dispatcher schedules are compared with what reconcile judged.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from dispatcher.attempt import decide
from dispatcher.store.base import AttemptRecord, Lease, OutcomeKind
from reconciler.filecheck import build_file
from reconciler.model import RetryConfig, Webhook
from reconciler.retry import DEFAULT_MAX_ATTEMPTS, MAX_DELAY_SECONDS, MAX_SCHEDULE_SECONDS

ROOT = Path(__file__).resolve().parents[2]
FIXTURE_FILES = sorted(
    [*(ROOT / "tests" / "reconciler" / "fixtures").glob("*/*.yaml"), *(ROOT / "webhooks.d").glob("*.yaml")]
)
DAY = 86400.0
NOW = 1_700_000_000.0


@dataclass(frozen=True)
class Verdict:
    """What reconcile said about one webhook document, and the webhook the dispatcher would load."""

    retry_bounds: tuple[str, ...]  # messages of retry-bounds errors
    errors: tuple[str, ...]  # rule ids of every error
    hook: Webhook | None


def reconcile(document: dict[str, Any]) -> Verdict:
    """Run reconcile's per-file check on one document written as a file."""
    text = json.dumps(document).encode("utf-8")  # JSON is YAML
    loaded = build_file(text, "hook.yaml")
    diagnostics = loaded.result.diagnostics
    bounds = tuple(d.message for d in diagnostics if d.rule == "retry-bounds")
    errors = tuple(d.rule for d in diagnostics if d.is_error)
    hooks = loaded.result.webhooks
    return Verdict(bounds, errors, hooks[0] if hooks else None)


def document(retry: dict[str, Any] | None, name: str = "agree") -> dict[str, Any]:
    spec: dict[str, Any] = {"target_url": "https://a.example.com/hook", "event_type": "package.created"}
    if retry is not None:
        spec["retry_countdown_config"] = retry
    return {"apiVersion": "webhooks/v1", "kind": "Webhook", "metadata": {"name": name}, "spec": spec}


def dispatched_delays(hook: Webhook, seed: int = 7) -> list[float]:
    """Fail every attempt of one delivery through ``attempt.decide``: the delays it schedules, until dead."""
    rng = random.Random(seed)
    delays: list[float] = []
    attempts = 0
    while True:
        lease = Lease(1, 1, NOW + 60, "ab" * 16, "package.created", hook.name, b"{}", attempts, NOW)
        decision = decide(lease, hook, AttemptRecord(NOW, 0.01, status_code=500), rng, NOW)
        if decision.outcome.kind is OutcomeKind.DEAD:
            return delays
        assert decision.outcome.kind is OutcomeKind.RETRY and decision.outcome.next_attempt_at is not None
        delays.append(decision.outcome.next_attempt_at - NOW)
        attempts += 1
        assert attempts <= 100, "the dispatcher kept retrying past the schema's largest max_attempts"


def expected_attempts(retry: dict[str, Any]) -> int:
    """The attempts reconcile assumes for a config (SPEC section 1 defaults)."""
    if "max_attempts" in retry:
        return int(retry["max_attempts"])
    if retry["choice"] == "schedule":
        return len(retry["kwargs"]["delays"]) + 1
    return DEFAULT_MAX_ATTEMPTS


def assert_agree(retry: dict[str, Any], verdict: Verdict) -> None:
    """A legal config is followed exactly by the dispatcher; an illegal one is never loaded."""
    if verdict.retry_bounds or verdict.errors:
        assert verdict.hook is None  # the dispatcher never applies a tree reconcile rejects
        return
    assert verdict.hook is not None
    delays = dispatched_delays(verdict.hook)
    assert len(delays) + 1 == expected_attempts(retry)
    jitter = float(retry.get("jitter", 0))
    assert all(0 <= d <= MAX_DELAY_SECONDS for d in delays)
    assert sum(delays) <= MAX_SCHEDULE_SECONDS * (1 + jitter)
    if not jitter and retry["choice"] != "random":
        # Without jitter the dispatcher waits exactly the delays reconcile judged: none was clamped.
        assert delays == list(verdict.hook.retry_policy.nominal_delays())


def fixture_configs() -> list[tuple[str, int, dict[str, Any]]]:
    found = []
    for path in FIXTURE_FILES:
        try:
            docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except yaml.YAMLError:
            continue  # the yaml-syntax fixture
        for index, doc in enumerate(docs):
            spec = doc.get("spec") if isinstance(doc, dict) else None
            retry = spec.get("retry_countdown_config") if isinstance(spec, dict) else None
            if isinstance(retry, dict) and isinstance(retry.get("kwargs"), dict) and "choice" in retry:
                found.append((str(path.relative_to(ROOT)), index, doc))
    return found


FIXTURES = fixture_configs()


def test_the_fixtures_hold_retry_configs_of_every_kind() -> None:
    """The fixture sweep below sees legal and illegal configs, so it can fail both ways."""
    verdicts = [reconcile(doc) for _, _, doc in FIXTURES]
    assert any(v.retry_bounds for v in verdicts) and any(v.hook is not None for v in verdicts)


@pytest.mark.parametrize(("file", "index", "doc"), FIXTURES, ids=[f"{f}#{i}" for f, i, _ in FIXTURES])
def test_fixture_retry_configs_are_judged_and_followed_alike(
    file: str, index: int, doc: dict[str, Any]
) -> None:
    """Every retry config in the fixtures and webhooks.d is either rejected and never loaded, or followed by
    the dispatcher for exactly the attempts and delays reconcile accepted."""
    assert_agree(doc["spec"]["retry_countdown_config"], reconcile(doc))


def over(seconds: float) -> float:
    return seconds + 1


EDGES: list[tuple[str, dict[str, Any], bool]] = [
    (
        "fixed at the single-delay bound",
        {"choice": "fixed", "kwargs": {"seconds": 7 * DAY}, "max_attempts": 2},
        True,
    ),
    ("fixed past it", {"choice": "fixed", "kwargs": {"seconds": over(7 * DAY)}, "max_attempts": 2}, False),
    (
        "fixed at the total bound",
        {"choice": "fixed", "kwargs": {"seconds": 6 * DAY}, "max_attempts": 6},
        True,
    ),
    (
        "fixed past the total bound",
        {"choice": "fixed", "kwargs": {"seconds": 6 * DAY}, "max_attempts": 7},
        False,
    ),
    ("fixed, default attempts", {"choice": "fixed", "kwargs": {"seconds": 60}}, True),
    ("linear reaching the bound", {"choice": "linear", "kwargs": {"base": DAY}, "max_attempts": 9}, True),
    ("linear one retry further", {"choice": "linear", "kwargs": {"base": DAY}, "max_attempts": 10}, False),
    (
        "linear held by a limit",
        {"choice": "linear", "kwargs": {"base": DAY, "limit": 3600}, "max_attempts": 100},
        True,
    ),
    ("exponential unbounded", {"choice": "exponential", "kwargs": {"base": 10}, "max_attempts": 10}, False),
    (
        "exponential huge n",
        {"choice": "exponential", "kwargs": {"base": 1e300, "limit": 60}, "max_attempts": 100},
        True,
    ),
    (
        "exponential limit at the bound",
        {"choice": "exponential", "kwargs": {"base": 2, "limit": 7 * DAY}, "max_attempts": 5},
        True,
    ),
    (
        "exponential limit past it",
        {"choice": "exponential", "kwargs": {"base": 2, "limit": over(7 * DAY)}, "max_attempts": 40},
        False,
    ),
    ("exponential below one", {"choice": "exponential", "kwargs": {"base": 0.5, "factor": 600}}, True),
    (
        "random at the bound",
        {"choice": "random", "kwargs": {"min_value": 0, "max_value": 604800}, "max_attempts": 3},
        True,
    ),
    (
        "random past it",
        {"choice": "random", "kwargs": {"min_value": 0, "max_value": 604801}, "max_attempts": 3},
        False,
    ),
    ("random inverted", {"choice": "random", "kwargs": {"min_value": 60, "max_value": 6}}, False),
    (
        "schedule repeating its last",
        {"choice": "schedule", "kwargs": {"delays": [60, 3 * DAY]}, "max_attempts": 12},
        False,
    ),
    ("schedule default attempts", {"choice": "schedule", "kwargs": {"delays": [1, 2, 3]}}, True),
    (
        "schedule at the total bound",
        {"choice": "schedule", "kwargs": {"delays": [7 * DAY] * 4 + [2 * DAY]}},
        True,
    ),
    ("a single attempt", {"choice": "fixed", "kwargs": {"seconds": 60}, "max_attempts": 1}, True),
    ("the most attempts", {"choice": "fixed", "kwargs": {"seconds": 0}, "max_attempts": 100}, True),
    (
        "the widest jitter",
        {"choice": "fixed", "kwargs": {"seconds": 600}, "max_attempts": 4, "jitter": 1},
        True,
    ),
    (
        "jitter at the bound",
        {"choice": "fixed", "kwargs": {"seconds": 7 * DAY}, "max_attempts": 3, "jitter": 0.5},
        True,
    ),
]


@pytest.mark.parametrize(("retry", "legal"), [(r, ok) for _, r, ok in EDGES], ids=[e[0] for e in EDGES])
def test_edge_configs_are_judged_and_followed_alike(retry: dict[str, Any], legal: bool) -> None:
    """At and just past each bound, reconcile's verdict is the expected one and the dispatcher follows every
    config reconcile accepts (jitter 1, which the schema allows, included) without exceeding a bound."""
    verdict = reconcile(document(retry))
    assert (verdict.hook is not None) is legal, verdict
    assert_agree(retry, verdict)


def test_the_default_schedule_is_the_same_for_both() -> None:
    """Without retry_countdown_config reconcile finds nothing and the dispatcher makes the default 8 attempts
    within the jittered default steps."""
    verdict = reconcile(document(None))
    assert verdict.errors == () and verdict.hook is not None
    delays = dispatched_delays(verdict.hook)
    nominal = [5, 300, 1800, 7200, 18000, 36000, 36000]
    assert len(delays) == len(nominal)
    assert all(0.8 * n <= d <= 1.2 * n for d, n in zip(delays, nominal, strict=True))


def test_a_rejected_delay_is_the_one_the_dispatcher_would_have_clamped() -> None:
    """The retry reconcile names as too long is the first the dispatcher's schedule would cut to the bound."""
    retry = {"choice": "exponential", "kwargs": {"base": 2, "factor": 60}, "max_attempts": 20}
    (message,) = reconcile(document(retry)).retry_bounds
    assert "exponential retry 15 would wait 11.4 days" in message
    config = RetryConfig("exponential", {"base": 2, "factor": 60}, max_attempts=20)
    policy = Webhook("x", "https://a.example.com/h", ("t",), retry=config).retry_policy
    rng = random.Random(0)
    waits = [policy.delay_after(made, rng) for made in range(1, 20)]
    assert waits.index(MAX_DELAY_SECONDS) == 14  # retry 15 (n = 14) is the first held at 7 days


def test_a_loaded_webhook_keeps_one_policy_for_every_attempt() -> None:
    """The policy is built with the webhook and shared by equal configs; attempts do not rebuild it."""
    retry = {"choice": "fixed", "kwargs": {"seconds": 30}, "max_attempts": 3}
    first, second = (reconcile(document(retry, name)).hook for name in ("one", "two"))
    assert first is not None and second is not None
    assert first.retry_policy is second.retry_policy
    assert dispatched_delays(first) == [30.0, 30.0]
