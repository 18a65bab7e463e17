"""``reconcile import``: dj-whisperer exports to webhook files that route exactly as the OMS did. Pure.

Input is the parsed JSON of each export file: Django's ``dumpdata whisperer.webhook`` (a list of
``{"model", "pk", "fields"}``; ``whisperer.webhookevent`` rows too) or the REST API's
``GET /whisperer/hooks/`` (a list of rows with ``id``, or a page with ``results``). Each webhook row
becomes one document:

- ``target_url``, ``event_type`` (a literal type, never a pattern), ``is_active`` -> ``status``;
- ``secret_key``, ``config.auth``'s password and credential-looking ``additional_headers`` values become
  ``{env: WEBHOOK_...}`` references; their values are collected for the secrets file, never written into a
  webhook file. Headers the dispatcher sets itself (Content-Type, X-Whisperer-*) or that belong to one
  connection (hop-by-hop) are dropped with a warning;
- ``config.auth`` (``auth_type: basic|token``) -> ``config.auth``; every other ``config`` key ->
  ``config.scope``, always written (``{}`` included), because that is how ``deliver_event(config_filter=...)``
  uses them (see ``reconciler.routing``);
- ``retry_countdown_config`` kept as it is, with ``max_attempts: 19``: the first attempt, 10 Celery retries,
  then the undelivered-event scanner's retries up to ``retry_count`` 18. Lowered (with a warning) only when
  the schedule would break the reconciler's retry bounds;
- ``callback`` (a Python path inside the OMS) has no equivalent: reported and dropped.

Every document is rendered as YAML and checked by the reconciler's own per-file checks before it is
accepted, so what the import writes is what ``reconcile --check`` accepts. Any error anywhere makes the whole
result unwritable (``ImportResult.ok``); every problem of every row is reported at once.

Rows are read by ``reconciler.importrows``, events mapped by ``reconciler.importevents``, text rendered by
``reconciler.importrender``; ``reconciler.importcli`` is the only part that reads or writes files.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from reconciler.fastschema import json_equal
from reconciler.filecheck import build_file
from reconciler.importevents import map_events
from reconciler.importrender import render_webhook
from reconciler.importrows import Finding, Problems, Row, json_field, shown, split_rows
from reconciler.model import API_VERSION, KIND, Severity
from reconciler.redact import is_sensitive_name
from reconciler.retry import MAX_DELAY_SECONDS, MAX_SCHEDULE_SECONDS, build_retry_delays
from reconciler.rules import HOP_BY_HOP_HEADERS, RESERVED_HEADERS, looks_like_credential
from reconciler.yamlsource import parse_source

#: Attempts the OMS makes: the first, TASK_RETRY_COUNT (10) Celery retries, then the scanner's up to
#: MAX_RETRY_COUNT (18).
OMS_MAX_ATTEMPTS = 19
OMS_CHOICES = ("fixed", "linear", "exponential", "random")
_EVENT_TYPE = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TOKEN_OPTIONS = ("url", "username_field", "password_field", "token_key", "header_format")


@dataclass(frozen=True, slots=True)
class Secret:
    """A value for the secrets file: ``env`` is what the webhook file references."""

    env: str
    value: str = field(repr=False)
    note: str  # "<webhook name>: <field>", written as a comment above it


@dataclass(frozen=True, slots=True)
class ImportedWebhook:
    name: str
    text: str  # the YAML file


@dataclass(frozen=True, slots=True)
class ImportResult:
    webhooks: tuple[ImportedWebhook, ...]
    secrets: tuple[Secret, ...]
    events: tuple[str, ...]  # NDJSON lines for ``dispatch publish``
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        return not any(f.severity is Severity.ERROR for f in self.findings)


def build_import(
    exports: Sequence[tuple[str, Any]], *, with_events: bool, out_display: str = "webhooks.d"
) -> ImportResult:
    """Map every (file name, parsed JSON) export to webhook files, secrets and (``with_events``) events.

    ``out_display`` names the output directory in the diagnostics of the in-memory check.
    """
    problems = Problems()
    hooks: list[Row] = []
    events: list[Row] = []
    for source, data in exports:
        split_rows(source, data, hooks, events, problems)
    imported: list[ImportedWebhook] = []
    secrets: list[Secret] = []
    names: dict[str, Row] = {}  # name -> the row that took it
    by_id: dict[str, tuple[str, str]] = {}  # str(pk) -> (name, event type)
    envs: set[str] = set()
    for row in hooks:
        mapped = _map_webhook(row, problems, envs)
        if mapped is None:
            continue
        document, row_secrets = mapped
        name = document["metadata"]["name"]
        if name in names:
            first = names[name]
            problems.error(row, f"webhook {name!r} is also given at {first.source} {first.where}")
            continue
        names[name] = row
        if _check_document(row, document, out_display, problems, imported):
            secrets.extend(row_secrets)
            if row.pk is not None:
                by_id[str(row.pk)] = (name, document["spec"]["event_type"])
    lines: list[str] = []
    if events and not with_events:
        problems.about_file(
            Severity.WARNING,
            events[0].source,
            f"{len(events)} webhook event rows ignored; --events FILE turns the undelivered ones into NDJSON "
            "for dispatch publish",
        )
    elif events:
        lines = list(map_events(events, by_id, problems))
    return ImportResult(tuple(imported), tuple(secrets), tuple(lines), tuple(problems.found))


# --- webhooks ---------------------------------------------------------------------------------------------


def _map_webhook(row: Row, problems: Problems, envs: set[str]) -> tuple[dict[str, Any], list[Secret]] | None:
    """The document and secrets of one webhook row; None (with errors reported) when it cannot be mapped."""
    errors_before = problems.errors
    fields = row.fields
    url, event_type = fields.get("target_url"), fields.get("event_type")
    if not isinstance(url, str) or not url:
        problems.error(row, "target_url is missing or not a string")
        return None
    if not isinstance(event_type, str) or not _EVENT_TYPE.fullmatch(event_type):
        problems.error(
            row,
            "event_type must be a lowercase event type such as 'package.created' (no wildcards: the OMS "
            f"matches it literally), got {shown(event_type)}",
        )
        return None
    if "." not in event_type:
        problems.warning(
            row,
            f"event_type {event_type!r} is not dotted; the OMS's own events are (package.created): check "
            "that the OMS really emits this name",
        )
    name = build_name(row.pk, url, event_type, fields.get("user"))
    secrets: list[Secret] = []

    def secret(suffix: str, value: str, what: str) -> dict[str, str]:
        if any(c in value for c in "\r\n\0"):
            problems.error(row, f"{what}: the value holds a line break or NUL (not for an env file)")
        env = _unique_env(f"WEBHOOK_{_env_part(name)}_{suffix}", envs)
        secrets.append(Secret(env, value, f"{name}: {what}"))
        return {"env": env}

    labels = {"source": "whisperer"}
    if row.pk is not None:
        labels["whisperer-id"] = str(row.pk)
    user = fields.get("user")
    if isinstance(user, int | str) and not isinstance(user, bool):
        labels["whisperer-user"] = str(user)
    elif isinstance(user, list) and all(isinstance(u, str) for u in user):  # a natural key
        labels["whisperer-user"] = "/".join(user)[:256]
    spec: dict[str, Any] = {"target_url": url, "event_type": event_type}
    spec["status"] = "inactive" if fields.get("is_active", True) is False else "active"
    secret_key = fields.get("secret_key")
    if isinstance(secret_key, str) and secret_key:  # dj-whisperer signs only with a non-empty key
        spec["secret_key"] = secret("SECRET", secret_key, "secret_key")
    elif secret_key not in (None, ""):
        problems.error(row, "secret_key is not a string")
    headers = json_field(row, "additional_headers", {}, problems)
    config = json_field(row, "config", {}, problems)
    if not isinstance(headers, dict):
        problems.error(row, "additional_headers is not an object")
        headers = {}
    if not isinstance(config, dict):
        problems.error(row, "config is not an object")
        config = {}
    spec["additional_headers"] = _map_headers(row, headers, problems, secret)
    auth = _map_auth(row, config.get("auth"), problems, secret) if "auth" in config else None
    url_auth = _split_url_credentials(row, url, auth is not None, problems, secret)
    if url_auth is not None:
        spec["target_url"], auth = url_auth
    spec["config"] = {
        **({"auth": auth} if auth else {}),
        "scope": {k: v for k, v in config.items() if k != "auth"},
    }
    retry = _map_retry(row, problems)
    if retry is not None:
        spec["retry_countdown_config"] = retry
    callback = fields.get("callback")
    if callback:
        problems.warning(
            row,
            f"callback {shown(callback)} is a Python function inside the OMS; it has no equivalent here "
            "and was dropped (spec.callback can report outcomes to a URL instead)",
        )
    if problems.errors > errors_before:
        return None
    document = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name, "labels": labels}}
    return {**document, "spec": spec}, secrets


def build_name(pk: Any, target_url: str, event_type: str, user: Any = None) -> str:
    """A stable, unique DNS label for a webhook row: ``<host>-<event type>-<id>``, at most 63 characters.

    The id (unique per table) makes it unique; a row without one gets a digest of what makes a dj-whisperer
    webhook unique instead (user, target URL, event type).
    """
    try:
        host = (urlsplit(target_url).hostname or "").removeprefix("www.")
    except ValueError:
        host = ""
    base = "-".join(p for p in (_slug(host), _slug(event_type)) if p) or "webhook"
    if isinstance(pk, int) and not isinstance(pk, bool) and pk >= 0:
        suffix = f"-{pk}"
    else:
        what = json.dumps([pk, user, target_url, event_type], default=str)
        suffix = "-" + hashlib.sha256(what.encode("utf-8")).hexdigest()[:10]
    return base[: 63 - len(suffix)].rstrip("-") + suffix


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _env_part(text: str) -> str:
    return re.sub(r"[^A-Z0-9]+", "_", text.upper()).strip("_")


def _unique_env(env: str, taken: set[str]) -> str:
    candidate, n = env, 2
    while candidate in taken:
        candidate, n = f"{env}_{n}", n + 1
    taken.add(candidate)
    return candidate


def _map_headers(row: Row, headers: Mapping[str, Any], problems: Problems, secret: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    seen: set[str] = set()
    for name, value in headers.items():
        lowered = name.lower()
        if not _HEADER_NAME.fullmatch(name):
            problems.error(row, f"additional_headers: {shown(name)} is not an HTTP header name")
        elif lowered in RESERVED_HEADERS:
            problems.warning(
                row,
                f"header {name!r} dropped: the dispatcher sets it on every delivery (the OMS let headers "
                "override it)",
            )
        elif lowered in HOP_BY_HOP_HEADERS:
            problems.warning(row, f"header {name!r} dropped: a hop-by-hop header")
        elif lowered in seen:
            problems.warning(row, f"header {name!r} dropped: given twice (names ignore case)")
        elif not isinstance(value, str):
            problems.error(row, f"header {name!r}: the value is not a string")
        elif any(c in value for c in "\r\n\0"):
            problems.error(row, f"header {name!r}: the value contains a line break or NUL")
        elif looks_like_credential(name, value) or is_sensitive_name(name):
            out[name] = secret(f"HEADER_{_env_part(name)}", value, f"additional_headers.{name}")
        else:
            out[name] = value
        seen.add(lowered)
    return out


def _map_auth(row: Row, auth: Any, problems: Problems, secret: Any) -> dict[str, Any] | None:
    if not isinstance(auth, dict):
        problems.error(row, "config.auth is not an object")
        return None
    kind = auth.get("auth_type")
    allowed = {"auth_type", "username", "password", *(_TOKEN_OPTIONS if kind == "token" else ())}
    if kind not in ("basic", "token"):
        problems.error(row, f"config.auth: auth_type {shown(kind)} is neither 'basic' nor 'token'")
        return None
    username, password = auth.get("username"), auth.get("password")
    if not isinstance(username, str) or not username or not isinstance(password, str):
        problems.error(row, "config.auth needs a username and a password (strings)")
        return None
    for key in sorted(set(auth) - allowed):
        problems.warning(row, f"config.auth: {key!r} ignored ({kind} auth does not use it)")
    out: dict[str, Any] = {"type": kind, "username": username}
    out["password"] = secret("AUTH_PASSWORD", password, "config.auth.password")
    if kind == "token":
        out.update({key: auth[key] for key in _TOKEN_OPTIONS if key in auth})
    return out


def _split_url_credentials(
    row: Row, url: str, has_auth: bool, problems: Problems, secret: Any
) -> tuple[str, dict[str, Any]] | None:
    """``user:password@`` in a target URL (which requests sends as Basic auth) as config.auth."""
    try:
        parts = urlsplit(url)
        userinfo, _, host = parts.netloc.rpartition("@")
    except ValueError:
        return None  # the in-memory check reports the URL
    if not userinfo:
        return None
    if has_auth:
        problems.error(row, "target_url holds credentials and config.auth is set too")
        return None
    username, _, password = userinfo.partition(":")
    problems.warning(row, "target_url held credentials: moved to config.auth (basic)")
    auth = {
        "type": "basic",
        "username": unquote(username) or "-",
        "password": secret("AUTH_PASSWORD", unquote(password), "config.auth.password"),
    }
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment)), auth


def _map_retry(row: Row, problems: Problems) -> dict[str, Any] | None:
    retry = json_field(row, "retry_countdown_config", None, problems)
    if retry is None:
        problems.warning(row, "no retry_countdown_config: the default schedule applies")
        return None
    choice = retry.get("choice") if isinstance(retry, dict) else None
    if choice not in OMS_CHOICES:
        problems.error(
            row,
            f"retry_countdown_config: choice {shown(choice)} has no equivalent (expected one of "
            f"{', '.join(OMS_CHOICES)})",
        )
        return None
    assert isinstance(retry, dict)  # for mypy: choice came from it
    kwargs = retry.get("kwargs") or {}
    attempts = _attempts_within_bounds(choice, kwargs)
    if attempts < OMS_MAX_ATTEMPTS:
        problems.warning(
            row,
            f"{choice} retries of these kwargs would wait longer than the reconciler allows (one delay at "
            f"most {MAX_DELAY_SECONDS / 86400:g} days, all at most {MAX_SCHEDULE_SECONDS / 86400:g} days) "
            f"before the OMS's last ones: max_attempts lowered from {OMS_MAX_ATTEMPTS} to {attempts}",
        )
    return {"choice": choice, "kwargs": kwargs, "max_attempts": attempts}


def _attempts_within_bounds(choice: str, kwargs: Any) -> int:
    """The most attempts, up to the OMS's 19, whose delays stay within the retry-bounds rule."""
    try:
        delays = list(build_retry_delays(choice, kwargs, OMS_MAX_ATTEMPTS))
    except (TypeError, ValueError, AttributeError):
        return OMS_MAX_ATTEMPTS  # malformed kwargs: the in-memory check reports them
    total = 0.0
    for n, delay in enumerate(delays):
        total += delay
        if delay > MAX_DELAY_SECONDS or total > MAX_SCHEDULE_SECONDS:
            return max(n + 1, 1)
    return OMS_MAX_ATTEMPTS


def _check_document(
    row: Row, document: dict[str, Any], out_display: str, problems: Problems, into: list[ImportedWebhook]
) -> bool:
    """Render, then run the reconciler's per-file checks on the text; keep it if it has no error."""
    name = document["metadata"]["name"]
    text = render_webhook(document, f"{row.source} {row.where}")
    loaded = build_file(text.encode("utf-8"), f"{out_display.rstrip('/')}/{name}.yaml")
    parsed = parse_source(text, name).documents
    if len(parsed) != 1 or not json_equal(parsed[0].data, document):
        problems.error(row, "the webhook does not read back as written (a YAML quirk)")
        return False
    for d in loaded.result.diagnostics:
        report = problems.error if d.is_error else problems.warning
        report(row, f"{d.rule} at {d.json_path}: {d.message}")
    if any(d.is_error for d in loaded.result.diagnostics):
        return False
    into.append(ImportedWebhook(name, text))
    return True
