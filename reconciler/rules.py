"""Rules beyond the schema: what JSON Schema cannot say, each with a stable rule id.

Every rule is a pure function of parsed documents (data plus positions) and returns diagnostics. Rules
read the data defensively: they also run on documents the schema rejects, so one load reports every problem
at once.

Per document: ``unknown-api-version``, ``unknown-kind``, ``literal-secret``, ``url-credentials``,
``url-query-secret``, ``invalid-url``, ``insecure-url``, ``private-address``, ``reserved-header``,
``auth-header-conflict``, ``hop-by-hop-header``, ``header-injection``, ``duplicate-header``, ``retry-never``,
``retry-bounds``.
Per document, against the operator's secret sources (``check_secret_sources``, run by ``reconcile`` only):
``secret-path-traversal``, ``secret-path-outside``, ``secret-env-pattern``.
Across files: ``duplicate-name``, ``unknown-event-type``.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from reconciler.addresses import parse_ip_literal
from reconciler.addresses import refusal as address_refusal
from reconciler.model import API_VERSION, KIND, Diagnostic, Severity
from reconciler.retry import MAX_DELAY_SECONDS as MAX_DELAY_SECONDS  # re-exported for the rule tests
from reconciler.retry import MAX_SCHEDULE_SECONDS, build_policy
from reconciler.retry import build_retry_delays as build_retry_delays  # re-exported for the rule tests
from reconciler.routing import pattern_matches
from reconciler.secretsources import SecretSources, has_parent_step
from reconciler.yamlsource import Document, JsonPath, format_json_path

EVENT_TYPES_KIND = "EventTypes"
KNOWN_KINDS = (KIND, EVENT_TYPES_KIND)

#: Rules whose finding replaces the schema's (less helpful) error at the same path.
CLAIMING_RULES = frozenset({"literal-secret", "header-injection"})

#: Headers the dispatcher sets on every delivery (SPEC section 5); additional_headers must not override them.
RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "host", "x-whisperer-event", "x-whisperer-signature"}
    | {"webhook-id", "webhook-timestamp", "webhook-signature"}
)
#: RFC 9110 section 7.6.1: connection-specific headers a client must not forward.
HOP_BY_HOP_HEADERS = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection"}
    | {"te", "trailer", "trailers", "transfer-encoding", "upgrade"}
)
_CREDENTIAL_NAME_PARTS = (
    "authorization", "token", "secret", "password", "passwd", "apikey", "api-key", "api_key",
    "credential", "cookie", "session", "signature", "x-auth",
)  # fmt: skip
_CREDENTIAL_VALUE = re.compile(
    r"^(?:(?:bearer|basic|token|digest|negotiate|apikey)\s+\S|whsec_|sk_(?:live|test)_|gh[pousr]_|xox[abpr]-"
    r"|eyJ[\w-]+\.[\w-]+\.)",
    re.IGNORECASE,
)
_CREDENTIAL_QUERY_NAMES = frozenset(
    {"token", "access_token", "api_key", "apikey", "key", "secret", "password", "sig", "signature", "auth"}
)


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate ``word`` was most likely meant to be, if any is close enough."""
    options = list(candidates)

    def squash(text: str) -> str:
        return text.lower().replace("_", "").replace("-", "")

    for option in options:  # targetUrl, target-url, TARGET_URL all mean target_url
        if squash(option) == squash(word):
            return option
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return close[0] if close else None


def quote(text: str, limit: int = 60) -> str:
    """``text`` quoted for a message: escaped (no line breaks reach a report) and shortened."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


def _suggestion(word: str, candidates: Iterable[str]) -> str:
    best = did_you_mean(word, candidates)
    return f"; did you mean {best!r}?" if best else ""


def _get(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


class _Findings:
    """Collects diagnostics for one document, positioned at keys or values."""

    def __init__(self, doc: Document, file: str) -> None:
        self.doc = doc
        self.file = file
        self.found: list[Diagnostic] = []

    def at_value(self, severity: Severity, rule: str, message: str, path: JsonPath) -> None:
        self._add(severity, rule, message, path, self.doc.value_position(path))

    def at_key(self, severity: Severity, rule: str, message: str, path: JsonPath) -> None:
        self._add(severity, rule, message, path, self.doc.key_position(path))

    def _add(
        self, severity: Severity, rule: str, message: str, path: JsonPath, position: tuple[int, int]
    ) -> None:
        # The dispatcher keeps the warnings of a loaded tree, and the same warning recurs in many files
        # (every http:// target): its message and path are shared, not kept once per file.
        line, column = position
        text, json_path = sys.intern(message), sys.intern(format_json_path(path))
        self.found.append(Diagnostic(severity, rule, text, self.file, line, column, json_path))


def check_envelope(doc: Document, file: str) -> list[Diagnostic]:
    """``unknown-api-version`` / ``unknown-kind``: documents this reconciler does not understand.

    The loader checks nothing else in such a document: its shape belongs to someone else.
    """
    out = _Findings(doc, file)
    api_version, kind = _get(doc.data, "apiVersion"), _get(doc.data, "kind")
    if isinstance(api_version, str) and api_version != API_VERSION:
        hint = _suggestion(api_version, [API_VERSION]) or f"; this reconciler reads {API_VERSION!r}"
        out.at_value(
            Severity.ERROR,
            "unknown-api-version",
            f"unknown apiVersion {quote(api_version)}{hint}",
            ("apiVersion",),
        )
    if isinstance(kind, str) and kind not in KNOWN_KINDS:
        hint = _suggestion(kind, KNOWN_KINDS) or f"; expected one of {', '.join(map(repr, KNOWN_KINDS))}"
        out.at_value(Severity.ERROR, "unknown-kind", f"unknown kind {quote(kind)}{hint}", ("kind",))
    return out.found


def check_webhook(doc: Document, file: str) -> list[Diagnostic]:
    """Every per-document rule for a ``kind: Webhook`` document."""
    out = _Findings(doc, file)
    spec = _get(doc.data, "spec")
    if not isinstance(spec, dict):
        return []
    _check_secrets(out, spec)
    for path in (("spec", "target_url"), ("spec", "callback", "url"), ("spec", "config", "auth", "url")):
        _check_url(out, path, _get(doc.data, *path))
    headers = spec.get("additional_headers")
    if isinstance(headers, dict):
        _check_headers(out, headers, has_auth=isinstance(_get(spec, "config", "auth"), dict))
    retry = spec.get("retry_countdown_config")
    if isinstance(retry, dict):
        _check_retry(out, retry)
    return out.found


def _check_secrets(out: _Findings, spec: Mapping[str, Any]) -> None:
    for path, field in (
        (("spec", "secret_key"), "secret_key"),
        (("spec", "config", "auth", "password"), "password"),
    ):
        value = _get(spec, *path[1:])
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            out.at_value(
                Severity.ERROR,
                "literal-secret",
                f"{field} is a literal value; secrets never go into Git: use {{env: NAME}} or {{file: PATH}}",
                path,
            )


def check_secret_sources(doc: Document, file: str, sources: SecretSources) -> list[Diagnostic]:
    """Secret references the dispatcher would refuse under ``sources``, at the reference's name.

    ``secret-path-traversal`` (error): a ``{file:}`` path with ``..``, never read. ``secret-path-outside``
    (warning): an absolute path not written inside a secrets directory (the dispatcher, which may run with
    other ``--secrets-dir`` options, refuses it unless it lies inside one of its own). ``secret-env-pattern``
    (warning): a variable name no ``--secret-env`` glob matches.
    """
    out = _Findings(doc, file)
    spec = _get(doc.data, "spec")
    if not isinstance(spec, dict):
        return []
    sites: list[tuple[str, ...]] = [("spec", "secret_key"), ("spec", "config", "auth", "password")]
    headers = spec.get("additional_headers")
    if isinstance(headers, dict):
        sites[1:1] = [("spec", "additional_headers", name) for name in headers]
    for path in sites:
        ref = _get(doc.data, *path)
        if not isinstance(ref, dict) or len(ref) != 1:
            continue
        ((source, name),) = ref.items()
        if not isinstance(name, str):
            continue
        where: JsonPath = (*path, source)
        if source == "file" and has_parent_step(name):
            message = f"secret {{file: {quote(name)}}} contains '..'; the dispatcher never reads such a path"
            out.at_value(Severity.ERROR, "secret-path-traversal", message, where)
        elif source == "file" and name.startswith("/") and not sources.lexically_inside(name):
            dirs = ", ".join(sources.dirs)
            message = (
                f"secret {{file: {quote(name)}}} is outside the secrets directories ({dirs}); the dispatcher "
                "refuses it unless its --secrets-dir holds it (or use a name relative to that directory)"
            )
            out.at_value(Severity.WARNING, "secret-path-outside", message, where)
        elif source == "env" and not sources.env_allowed(name):
            patterns = ", ".join(sources.env_patterns)
            message = (
                f"secret {{env: {quote(name)}}} matches no allowed variable pattern ({patterns}); the "
                "dispatcher refuses it unless its --secret-env allows it"
            )
            out.at_value(Severity.WARNING, "secret-env-pattern", message, where)
    return out.found


def looks_like_credential(name: str, value: str) -> bool:
    """Whether a header's name or value says it carries a credential (``literal-secret`` for headers)."""
    lowered = name.lower()
    return any(part in lowered for part in _CREDENTIAL_NAME_PARTS) or bool(
        _CREDENTIAL_VALUE.match(value.strip())
    )


def _check_headers(out: _Findings, headers: Mapping[str, Any], *, has_auth: bool) -> None:
    seen: dict[str, str] = {}
    for name, value in headers.items():
        path: JsonPath = ("spec", "additional_headers", name)
        lowered = name.lower()
        if any(c in name for c in "\r\n\0"):
            out.at_key(Severity.ERROR, "header-injection", "header name contains a line break or NUL", path)
        if isinstance(value, str) and any(c in value for c in "\r\n\0"):
            message = f"header {quote(name)}: value contains a line break or NUL, which would inject headers"
            out.at_value(Severity.ERROR, "header-injection", message, path)
        if lowered in RESERVED_HEADERS:
            message = (
                f"header {quote(name)} is set by the dispatcher on every delivery and cannot be overridden"
            )
            out.at_key(Severity.ERROR, "reserved-header", message, path)
        elif lowered == "authorization" and has_auth:
            # Allowed (SPEC section 1 shows it) but dead: config.auth is applied after the headers.
            message = (
                "header 'Authorization' is replaced by config.auth on every delivery; keep only one of them"
            )
            out.at_key(Severity.WARNING, "auth-header-conflict", message, path)
        if lowered in HOP_BY_HOP_HEADERS:
            message = (
                f"header {quote(name)} is a hop-by-hop header: it belongs to one connection, not to a webhook"
            )
            out.at_key(Severity.ERROR, "hop-by-hop-header", message, path)
        if lowered in seen:
            message = (
                f"header {quote(name)} is also given as {quote(seen[lowered])}; header names ignore case"
            )
            out.at_key(Severity.ERROR, "duplicate-header", message, path)
        seen.setdefault(lowered, name)
        reported = (
            lowered in RESERVED_HEADERS or lowered in HOP_BY_HOP_HEADERS
        )  # already an error: say it once
        if isinstance(value, str) and not reported and looks_like_credential(name, value):
            message = (
                f"header {quote(name)} carries a literal credential; use {{env: NAME}} or {{file: PATH}}"
            )
            out.at_value(Severity.ERROR, "literal-secret", message, path)


_HTTP_URL = re.compile(r"https?://", re.IGNORECASE)
# https, a host name (with a letter no address literal has: not a hex digit or the x of 0x), no port, user
# info or query: nothing to report.
_PLAIN_HTTPS_URL = re.compile(r"https://(?=[^/]*[g-wyzG-WYZ])[A-Za-z0-9.-]+(?:/[^\s?#@\\]*)?")


def _check_url(out: _Findings, path: JsonPath, url: Any) -> None:
    if not isinstance(url, str) or not _HTTP_URL.match(url):
        return  # absent, or the schema reports it
    if _PLAIN_HTTPS_URL.fullmatch(url) and "localhost" not in url:
        return  # the common case, decided without urlsplit
    field = ".".join(str(p) for p in path[1:])
    try:
        parts = urlsplit(url)
        host, _port = parts.hostname, parts.port  # .port raises on a bad port
    except ValueError:
        out.at_value(Severity.ERROR, "invalid-url", f"{field} is not a valid URL", path)
        return
    if "@" in parts.netloc:
        message = f"{field} contains credentials (user:password@host); use config.auth or a secret reference"
        out.at_value(Severity.ERROR, "url-credentials", message, path)
    if not host:
        out.at_value(Severity.ERROR, "invalid-url", f"{field} has no host name", path)
        return
    secret_params = sorted({k for k, _ in parse_qsl(parts.query) if k.lower() in _CREDENTIAL_QUERY_NAMES})
    if secret_params:
        message = (
            f"{field} has what looks like a credential in its query ({', '.join(secret_params)}); anyone who "
            "can read the repository can use it: prefer a header with a secret reference"
        )
        out.at_value(Severity.WARNING, "url-query-secret", message, path)
    if parts.scheme.lower() == "http":
        what = "sends the password in clear text" if path[-2:] == ("auth", "url") else "is not encrypted"
        out.at_value(
            Severity.WARNING, "insecure-url", f"{field} uses http://, which {what}; use https://", path
        )
    if _is_private_host(host):
        message = (
            f"{field} points at a loopback or private address; the dispatcher refuses it unless started "
            "with --allow-cidr"
        )
        out.at_value(Severity.WARNING, "private-address", message, path)


def _is_private_host(host: str) -> bool:
    """Whether the egress guard refuses ``host`` by default: ``localhost``, or an address literal in any
    spelling the OS reads (``127.1``, ``0x7f000001``, ``[::ffff:10.0.0.1]``). Names are not resolved."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    address = parse_ip_literal(host)
    return address is not None and address_refusal(address) is not None


def _check_retry(out: _Findings, retry: Mapping[str, Any]) -> None:
    base: JsonPath = ("spec", "retry_countdown_config")
    attempts = retry.get("max_attempts")
    if attempts == 1 and not isinstance(attempts, bool):
        message = "max_attempts is 1: a delivery is never retried and goes dead after one failed attempt"
        out.at_value(Severity.WARNING, "retry-never", message, (*base, "max_attempts"))
    kwargs = retry.get("kwargs")
    if not isinstance(kwargs, dict) or not _numbers_only(kwargs):
        return  # the schema reports the shape
    choice = retry.get("choice")
    if choice == "random":
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        if isinstance(low, int) and isinstance(high, int) and low > high:
            message = f"random retry: min_value ({low}) is greater than max_value ({high})"
            out.at_value(Severity.ERROR, "retry-bounds", message, (*base, "kwargs", "min_value"))
    valid_attempts = isinstance(attempts, int) and not isinstance(attempts, bool) and attempts >= 1
    try:
        # The schedule the dispatcher will follow (reconciler.retry), asked for its delays.
        policy = build_policy(str(choice), kwargs, attempts if valid_attempts else None)
    except ValueError:
        return  # kwargs that do not fit the choice: the schema (or the check above) reports them
    largest = policy.largest_delay_bound()
    if largest <= MAX_DELAY_SECONDS and largest * (policy.max_attempts - 1) <= MAX_SCHEDULE_SECONDS:
        return  # no delay, nor all of them together, can exceed a bound: skip computing them
    delays = policy.nominal_delays()
    for n, delay in enumerate(delays):
        if delay > MAX_DELAY_SECONDS:
            where = ("delays", min(n, len(policy.delays) - 1)) if choice == "schedule" else ()
            message = (
                f"{choice} retry {n + 1} would wait {_duration(delay)}; no single delay may exceed "
                f"{_duration(MAX_DELAY_SECONDS)}"
                + ("" if choice in ("fixed", "random", "schedule") else " (add a limit)")
            )
            out.at_value(Severity.ERROR, "retry-bounds", message, (*base, "kwargs", *where))
            return
    if sum(delays) > MAX_SCHEDULE_SECONDS:
        message = (
            f"the retries span {_duration(sum(delays))} in total; a delivery must end within "
            f"{_duration(MAX_SCHEDULE_SECONDS)}: lower max_attempts or the delays"
        )
        out.at_value(Severity.ERROR, "retry-bounds", message, (*base, "kwargs"))


def _numbers_only(kwargs: Mapping[str, Any]) -> bool:
    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and v >= 0

    return all(all(map(number, v)) if isinstance(v, list) else number(v) for v in kwargs.values())


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}" if seconds <= 1000 * size else f"more than 1000 {unit}"
    return f"{seconds:.3g} seconds"


# --- across files -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NameSite:
    """Where a document's ``metadata.name`` is written."""

    kind: str
    name: str
    file: str
    line: int
    column: int
    json_path: str = "$.metadata.name"


@dataclass(frozen=True, slots=True)
class PatternSite:
    """Where one ``event_type`` pattern is written."""

    pattern: str
    file: str
    line: int
    column: int
    json_path: str


def check_duplicate_names(sites: Iterable[NameSite]) -> list[Diagnostic]:
    """``duplicate-name``: a name used again (per kind), reported at every later use, naming the first."""
    first: dict[tuple[str, str], NameSite] = {}
    found: list[Diagnostic] = []
    for site in sites:
        original = first.setdefault((site.kind, site.name), site)
        if original is not site:
            message = (
                f"{site.kind} name {quote(site.name)} is already defined at {original.file}:{original.line}; "
                "names must be unique across the directory"
            )
            found.append(
                Diagnostic(
                    Severity.ERROR,
                    "duplicate-name",
                    message,
                    site.file,
                    site.line,
                    site.column,
                    site.json_path,
                )
            )
    return found


def check_event_types(sites: Iterable[PatternSite], catalogue: frozenset[str]) -> list[Diagnostic]:
    """``unknown-event-type`` (warning): patterns that match no event type of the catalogue."""
    known = sorted(catalogue)
    matched: dict[str, bool] = {}
    found: list[Diagnostic] = []
    candidates: list[str] | None = None
    for site in sites:
        hit = matched.get(site.pattern)
        if hit is None:
            hit = matched[site.pattern] = any(pattern_matches(site.pattern, name) for name in known)
        if hit:
            continue
        if candidates is None:
            candidates = _pattern_candidates(known)
        hint = _suggestion(site.pattern, candidates)
        message = (
            f"event type {quote(site.pattern)} matches no known event type{hint} "
            "(if it is new, list it in an EventTypes document)"
        )
        found.append(
            Diagnostic(
                Severity.WARNING,
                "unknown-event-type",
                message,
                site.file,
                site.line,
                site.column,
                site.json_path,
            )
        )
    return found


def _pattern_candidates(names: list[str]) -> list[str]:
    # Suggestions keep the shape of what was written: names, and the wildcard forms built from them.
    out = set(names)
    for name in names:
        segments = name.split(".")
        for i in range(1, len(segments)):
            out.add(".".join(segments[:i]) + ".**")
        out.add(".".join([*segments[:-1], "*"]))
    return sorted(out)
