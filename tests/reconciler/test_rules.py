"""Rules beyond the schema, one behaviour at a time, on small parsed documents."""

from __future__ import annotations

import json
from typing import Any

import pytest

from reconciler.model import Diagnostic, Severity
from reconciler.rules import (
    MAX_DELAY_SECONDS,
    NameSite,
    PatternSite,
    build_retry_delays,
    check_duplicate_names,
    check_envelope,
    check_event_types,
    check_webhook,
    did_you_mean,
)
from reconciler.yamlsource import parse_source


def webhook_rules(spec: dict[str, Any]) -> list[Diagnostic]:
    """Run the per-document rules on a webhook with this spec (written as JSON, which is YAML)."""
    document = {"apiVersion": "webhooks/v1", "kind": "Webhook", "metadata": {"name": "n"}, "spec": spec}
    (doc,) = parse_source(json.dumps(document, indent=1), "f.yaml").documents
    return check_webhook(doc, "f.yaml")


def rules_of(found: list[Diagnostic]) -> list[tuple[str, str]]:
    return [(d.rule, d.json_path) for d in found]


BASE = {"target_url": "https://a.example.com/hook", "event_type": "package.created"}


def with_headers(headers: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {**BASE, "additional_headers": headers, **extra}


def test_a_clean_webhook_passes_every_rule() -> None:
    """A webhook with references for secrets, https URLs and sane retries draws no finding."""
    spec = with_headers(
        {"X-Source": "oms", "Authorization": {"env": "TOKEN"}},
        secret_key={"env": "SECRET"},
        retry_countdown_config={
            "choice": "exponential",
            "kwargs": {"base": 2, "limit": 3600},
            "max_attempts": 12,
        },
        callback={"url": "https://oms.example.com/outcomes"},
    )
    assert webhook_rules(spec) == []


@pytest.mark.parametrize(
    "name",
    [
        *("Content-Type", "content-length", "HOST", "X-Whisperer-Event", "x-whisperer-signature"),
        *("Webhook-ID", "webhook-timestamp", "WEBHOOK-SIGNATURE"),
    ],
)
def test_delivery_headers_cannot_be_overridden_in_any_case(name: str) -> None:
    """Every header the dispatcher sets is a `reserved-header` error at its key, whatever its case."""
    found = webhook_rules(with_headers({name: "x"}))
    assert [(d.rule, d.severity) for d in found] == [("reserved-header", Severity.ERROR)]
    assert (found[0].line, found[0].column) == (11, 4)  # json.dumps(indent=1) puts the header key here


@pytest.mark.parametrize(
    "name",
    [
        *("Connection", "keep-alive", "Proxy-Authenticate", "Proxy-Connection", "TE", "Trailer"),
        *("Trailers", "Transfer-Encoding", "UPGRADE"),
    ],
)
def test_hop_by_hop_headers_are_rejected(name: str) -> None:
    """Connection-scoped headers are `hop-by-hop-header` errors."""
    assert [d.rule for d in webhook_rules(with_headers({name: "x"}))] == ["hop-by-hop-header"]


@pytest.mark.parametrize("value", ["a\rb", "a\nb", "a\r\nX-Evil: 1", "a\x00b"])
def test_line_breaks_and_nul_in_header_values_are_injection(value: str) -> None:
    """CR, LF or NUL in a header value is `header-injection`, and the message does not repeat the value."""
    (d,) = webhook_rules(with_headers({"X-Note": value}))
    assert d.rule == "header-injection" and value not in d.message


def test_line_break_in_a_header_name_is_injection() -> None:
    """A header name with a line break is `header-injection` at the key."""
    (d,) = webhook_rules(with_headers({"X-A\nB": "v"}))
    assert (d.rule, d.json_path) == ("header-injection", "$.spec.additional_headers['X-A\\nB']")


def test_header_names_differing_only_in_case_are_duplicates() -> None:
    """`X-Source` and `x-source` are one header for HTTP: the second is `duplicate-header`."""
    found = webhook_rules(with_headers({"X-Source": "a", "x-source": "b"}))
    assert rules_of(found) == [("duplicate-header", "$.spec.additional_headers.x-source")]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Authorization", "Token abc123"),
        ("Cookie", "session=abc"),
        ("X-Api-Key", "abc123"),
        ("X-Auth-Token", "abc123"),
        ("X-Forwarded-Note", "Bearer abc.def"),
        ("X-Signing", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        ("X-Id", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig"),
    ],
)
def test_credentials_written_into_headers_are_literal_secrets(name: str, value: str) -> None:
    """A credential-looking header (by name or by value) with a literal string is a `literal-secret` error."""
    (d,) = webhook_rules(with_headers({name: value}))
    assert (d.rule, d.severity) == ("literal-secret", Severity.ERROR)
    assert value not in d.message


def test_ordinary_headers_and_secret_references_are_not_literal_secrets() -> None:
    """Plain informational headers and secret references for credentials are fine."""
    headers = {"X-Source": "oms", "Accept-Language": "tr", "Authorization": {"file": "/run/secrets/t"}}
    assert webhook_rules(with_headers(headers)) == []


@pytest.mark.parametrize("value", ["hunter2", 123456])
def test_literal_secret_key_and_password_are_rejected(value: Any) -> None:
    """A secret_key or auth password written as a value is `literal-secret` at that value."""
    spec = {
        **BASE,
        "secret_key": value,
        "config": {"auth": {"type": "basic", "username": "u", "password": value}},
    }
    assert rules_of(webhook_rules(spec)) == [
        ("literal-secret", "$.spec.secret_key"),
        ("literal-secret", "$.spec.config.auth.password"),
    ]


def test_authorization_header_next_to_config_auth_is_a_warning() -> None:
    """An Authorization header that config.auth would replace is an `auth-header-conflict` warning."""
    auth = {"type": "basic", "username": "u", "password": {"env": "P"}}
    (d,) = webhook_rules(with_headers({"authorization": {"env": "T"}}, config={"auth": auth}))
    assert (d.rule, d.severity) == ("auth-header-conflict", Severity.WARNING)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://user:pw@a.example.com/hook", [("url-credentials", Severity.ERROR)]),
        ("https://a.example.com/hook?token=abc", [("url-query-secret", Severity.WARNING)]),
        ("http://a.example.com/hook", [("insecure-url", Severity.WARNING)]),
        ("https://127.0.0.1/hook", [("private-address", Severity.WARNING)]),
        ("https://10.1.2.3:8443/hook", [("private-address", Severity.WARNING)]),
        ("https://169.254.169.254/latest", [("private-address", Severity.WARNING)]),
        ("https://[::1]/hook", [("private-address", Severity.WARNING)]),
        ("https://localhost/hook", [("private-address", Severity.WARNING)]),
        ("https://127.1/hook", [("private-address", Severity.WARNING)]),
        ("https://2130706433/hook", [("private-address", Severity.WARNING)]),
        ("https://0x7f000001/hook", [("private-address", Severity.WARNING)]),
        ("https://0177.0.0.1/hook", [("private-address", Severity.WARNING)]),
        ("https://127.0.1/hook", [("private-address", Severity.WARNING)]),
        ("https://0xA9.0xFE.0xA9.0xFE/latest", [("private-address", Severity.WARNING)]),
        ("https://012.1/hook", [("private-address", Severity.WARNING)]),
        ("https://[::ffff:127.0.0.1]/hook", [("private-address", Severity.WARNING)]),
        ("https://[::ffff:7f00:1]/hook", [("private-address", Severity.WARNING)]),
        ("https://[fe80::1%25eth0]/hook", [("private-address", Severity.WARNING)]),
        ("https://[64:ff9b::a00:1]/hook", [("private-address", Severity.WARNING)]),
        ("https://8.8.8.8/hook", []),
        ("https://0x08080808/hook", []),
        ("https://134744072/hook", []),
        ("https://0xdeadbeef.example.com/hook", []),
        ("https://a.example.com:8443/hook?channel=3", []),
        ("https://a.example.com:99999/hook", [("invalid-url", Severity.ERROR)]),
        ("https:///hook", [("invalid-url", Severity.ERROR)]),
    ],
)
def test_target_url_rules(url: str, expected: list[tuple[str, Severity]]) -> None:
    """Credentials, query secrets, plain http, private addresses and malformed URLs are each reported."""
    found = webhook_rules({**BASE, "target_url": url})
    assert [(d.rule, d.severity) for d in found] == expected
    assert all("pw" not in d.message and "abc" not in d.message for d in found)


def test_callback_and_token_urls_are_checked_too() -> None:
    """The callback URL and the token endpoint get the same URL rules, under their own names."""
    auth = {
        "type": "token",
        "url": "http://auth.example.com/token",
        "username": "u",
        "password": {"env": "P"},
    }
    spec = {**BASE, "callback": {"url": "http://oms.example.com/x"}, "config": {"auth": auth}}
    found = webhook_rules(spec)
    assert rules_of(found) == [
        ("insecure-url", "$.spec.callback.url"),
        ("insecure-url", "$.spec.config.auth.url"),
    ]
    assert "password in clear text" in found[1].message


def retry(choice: str, max_attempts: int | None = None, **kwargs: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"choice": choice, "kwargs": kwargs}
    if max_attempts is not None:
        config["max_attempts"] = max_attempts
    return {**BASE, "retry_countdown_config": config}


def test_a_single_attempt_never_retries() -> None:
    """max_attempts 1 is a `retry-never` warning; 2 is fine."""
    (d,) = webhook_rules(retry("fixed", 1, seconds=60))
    assert (d.rule, d.severity, d.json_path) == (
        "retry-never",
        Severity.WARNING,
        "$.spec.retry_countdown_config.max_attempts",
    )
    assert webhook_rules(retry("fixed", 2, seconds=60)) == []


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        (retry("fixed", 3, seconds=8 * 86400), "fixed retry 1 would wait 8 days"),
        (retry("linear", 10, base=86400), "linear retry 9 would wait 8 days"),  # n = 8: 8 * 1 day
        # 60 * 2**13 s is 5.7 days, 60 * 2**14 s (retry 15, n = 14) is 11.4 days
        (retry("exponential", 20, base=2, factor=60), "exponential retry 15 would wait 11.4 days"),
        (retry("random", 3, min_value=0, max_value=10 * 86400), "random retry 1 would wait 10 days"),
        (retry("schedule", 4, delays=[60, 8 * 86400]), "schedule retry 2 would wait 8 days"),
    ],
)
def test_retry_bounds_use_the_delays_the_config_really_produces(spec: dict[str, Any], fragment: str) -> None:
    """Computed delays over 7 days are a `retry-bounds` error saying which retry and how long."""
    (d,) = webhook_rules(spec)
    assert d.rule == "retry-bounds" and fragment in d.message


def test_delays_within_bounds_are_accepted() -> None:
    """Growing delays held by a limit, and long delays that stay under both bounds, pass."""
    assert webhook_rules(retry("linear", 100, base=86400, limit=3600)) == []
    assert webhook_rules(retry("exponential", 100, base=10, limit=3600)) == []
    assert webhook_rules(retry("schedule", 4, delays=[600000] * 3)) == []  # 3 x 6.9 days


def test_the_whole_schedule_is_bounded_too() -> None:
    """Delays that are each allowed but span more than 30 days together are a `retry-bounds` error."""
    (d,) = webhook_rules(retry("fixed", 7, seconds=6 * 86400))  # 6 retries x 6 days
    assert d.rule == "retry-bounds" and "span 36 days" in d.message


def test_random_with_min_above_max_is_reported() -> None:
    """random with min_value above max_value is a `retry-bounds` error at min_value."""
    (d,) = webhook_rules(retry("random", 3, min_value=300, max_value=30))
    assert d.json_path == "$.spec.retry_countdown_config.kwargs.min_value"


def test_retry_delays_follow_the_admin_screen_semantics() -> None:
    """Delay of retry n = 0, 1, ...: seconds, min(base*n, limit), min(base**n * factor, limit), delays[n]."""
    assert list(build_retry_delays("fixed", {"seconds": 30}, 4)) == [30, 30, 30]
    assert list(build_retry_delays("linear", {"base": 60, "limit": 100}, 4)) == [0, 60, 100]
    assert list(build_retry_delays("exponential", {"base": 2, "factor": 30}, 5)) == [30, 60, 120, 240]
    assert list(build_retry_delays("exponential", {"base": 2}, 3)) == [1, 2]
    assert list(build_retry_delays("schedule", {"delays": [5, 60]}, 5)) == [5, 60, 60, 60]
    assert list(build_retry_delays("random", {"min_value": 1, "max_value": 9}, 3)) == [9, 9]  # the worst case
    assert (
        max(build_retry_delays("exponential", {"base": 10}, 100)) > MAX_DELAY_SECONDS
    )  # capped, no overflow


def test_envelope_rules_recognise_foreign_documents() -> None:
    """Another apiVersion or kind is reported with a close suggestion, else with what is expected."""

    def envelope(text: str) -> list[str]:
        (doc,) = parse_source(text, "f.yaml").documents
        return [d.message for d in check_envelope(doc, "f.yaml")]

    assert envelope("apiVersion: webhooks/v1\nkind: Webhook\n") == []
    assert envelope("apiVersion: webhooks/v1\nkind: EventTypes\n") == []
    assert envelope("apiVersion: webhook/v1\nkind: webhook\n") == [
        "unknown apiVersion 'webhook/v1'; did you mean 'webhooks/v1'?",
        "unknown kind 'webhook'; did you mean 'Webhook'?",
    ]
    assert envelope("apiVersion: apps/v1\nkind: Deployment\n") == [
        "unknown apiVersion 'apps/v1'; this reconciler reads 'webhooks/v1'",
        "unknown kind 'Deployment'; expected one of 'Webhook', 'EventTypes'",
    ]


def test_did_you_mean_handles_case_and_separators_then_typos() -> None:
    """Suggestions ignore case, '-' and '_' first, then fall back to the closest spelling, or nothing."""
    assert did_you_mean("targetUrl", ["target_url", "event_type"]) == "target_url"
    assert did_you_mean("evnt_type", ["target_url", "event_type"]) == "event_type"
    assert did_you_mean("colour", ["target_url", "event_type"]) is None


# --- across files -------------------------------------------------------------------------------------------


def test_duplicate_names_are_reported_at_every_later_use_naming_the_first() -> None:
    """Every later use of a name is an error naming the first; each kind has its own names."""
    sites = [
        NameSite("Webhook", "erp", "a.yaml", 4, 9),
        NameSite("EventTypes", "erp", "b.yaml", 4, 9),
        NameSite("Webhook", "erp", "c.yaml", 4, 9),
        NameSite("Webhook", "erp", "d.yaml", 5, 9),
    ]
    found = check_duplicate_names(sites)
    assert [(d.file, d.line, d.rule) for d in found] == [
        ("c.yaml", 4, "duplicate-name"),
        ("d.yaml", 5, "duplicate-name"),
    ]
    assert all("a.yaml:4" in d.message for d in found)


def test_event_type_patterns_are_checked_against_the_catalogue() -> None:
    """Patterns matching no catalogue entry are warnings with a suggestion; wildcards that match are fine."""
    catalogue = frozenset({"package.created", "package.status.shipped", "shipment.created"})
    patterns = ["*", "package.**", "package.*", "*.created", "package.status.shipped"]
    patterns += ["package.craeted", "pakage.status.*", "zzz.qqq.xxx"]
    sites = [PatternSite(p, "f.yaml", i + 1, 3, f"$.spec.event_type[{i}]") for i, p in enumerate(patterns)]
    found = check_event_types(sites, catalogue)
    assert [(d.line, d.severity) for d in found] == [
        (6, Severity.WARNING),
        (7, Severity.WARNING),
        (8, Severity.WARNING),
    ]
    assert "did you mean 'package.created'?" in found[0].message
    assert "did you mean 'package.status.*'?" in found[1].message
    assert "did you mean" not in found[2].message
