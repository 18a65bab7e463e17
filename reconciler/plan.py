"""The plan: what changes between two sets of webhooks, field by field (``reconcile --against REF``).

Pure: ``build_plan`` compares two name -> Webhook mappings; ``render_plan_text`` and ``plan_to_json`` render
the result. Field paths use the YAML names (``spec.target_url``, ``spec.additional_headers.X-Source``,
``metadata.labels.team``) so a reviewer can find the line in the file.

Secrets never reach a plan: a field holding a secret reference (``secret_key``, ``auth.password``, a header
whose value is ``{env: ...}``) is compared by reference but the plan keeps only the fact that it changed, and
renders it as ``<changed>`` (``(sensitive value)`` when added or removed): not even the reference is shown.
Plain strings that look like credentials (an ``Authorization`` header, ``user:pass@`` in a URL) are treated
the same way, see ``reconciler.redact``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any

from reconciler.model import SecretRef, Webhook
from reconciler.redact import REDACTED, is_sensitive_name, redact_url

#: Shown for a sensitive field whose value changed.
CHANGED = "<changed>"


class Action(StrEnum):
    ADD = "add"
    CHANGE = "change"
    REMOVE = "remove"

    @property
    def symbol(self) -> str:
        return _SYMBOLS[self]


_SYMBOLS = {Action.ADD: "+", Action.CHANGE: "~", Action.REMOVE: "-"}


@dataclass(frozen=True)
class FieldChange:
    """One field of one webhook: ``old``/``new`` are JSON values, ``None`` when absent or sensitive."""

    path: str
    action: Action
    old: Any = None
    new: Any = None
    sensitive: bool = False


@dataclass(frozen=True)
class WebhookChange:
    action: Action
    name: str
    file: str  # where the webhook is defined: the new file, or the old one for a removal
    fields: tuple[FieldChange, ...] = ()


@dataclass(frozen=True)
class Plan:
    changes: tuple[WebhookChange, ...]  # sorted by name

    def count(self, action: Action) -> int:
        return sum(1 for change in self.changes if change.action is action)

    @property
    def is_empty(self) -> bool:
        return not self.changes

    def summary(self) -> str:
        return (
            f"Plan: {self.count(Action.ADD)} to add, {self.count(Action.CHANGE)} to change, "
            f"{self.count(Action.REMOVE)} to remove."
        )


def build_plan(old: Mapping[str, Webhook], new: Mapping[str, Webhook]) -> Plan:
    """Compare two trees (name -> webhook); the plan turns ``old`` into ``new``."""
    changes: list[WebhookChange] = []
    for name in sorted(old.keys() | new.keys()):
        before, after = old.get(name), new.get(name)
        if before is None and after is not None:
            added = _diff({}, _flatten(after))
            changes.append(WebhookChange(Action.ADD, name, after.source.file, added))
        elif after is None and before is not None:
            changes.append(WebhookChange(Action.REMOVE, name, before.source.file))
        elif before is not None and after is not None:
            changed = _diff(_flatten(before), _flatten(after))
            if changed:
                changes.append(WebhookChange(Action.CHANGE, name, after.source.file, changed))
    return Plan(tuple(changes))


# --- flattening: a webhook as an ordered path -> field mapping ---------------------------------------------


@dataclass(frozen=True)
class _Field:
    shown: Any  # what may be printed (JSON value); None for a secret
    compared: Any  # what decides equality (may hold a SecretRef or a raw URL; never printed)
    sensitive: bool = False


def _plain(value: Any) -> _Field:
    shown = _json_value(value)
    return _Field(shown, shown)


def _secret(ref: SecretRef | str) -> _Field:
    return _Field(None, ref, sensitive=True)


def _url(url: str) -> _Field:
    return _Field(redact_url(url), url)


def _header(name: str, value: SecretRef | str) -> _Field:
    if isinstance(value, SecretRef) or is_sensitive_name(name):
        return _secret(value)
    return _plain(value)


def _flatten(hook: Webhook) -> dict[str, _Field]:
    """Every set field of a webhook, in the order of the YAML file; fields that are None are left out."""
    return dict(_iter_fields(hook))


def _iter_fields(hook: Webhook) -> Iterator[tuple[str, _Field]]:
    yield "spec.target_url", _url(hook.target_url)
    yield "spec.event_type", _plain(list(hook.event_types))
    yield "spec.status", _plain("active" if hook.active else "inactive")
    if hook.secret_key is not None:
        yield "spec.secret_key", _secret(hook.secret_key)
    for name in sorted(hook.additional_headers):
        yield f"spec.additional_headers.{name}", _header(name, hook.additional_headers[name])
    yield "spec.config.timeout", _plain(hook.timeout_seconds)
    if hook.auth is not None:
        for f in fields(hook.auth):
            value = getattr(hook.auth, f.name)
            if isinstance(value, SecretRef):
                item = _secret(value)
            else:
                item = _url(value) if f.name == "url" else _plain(value)
            yield f"spec.config.auth.{f.name}", item
    for key in sorted(hook.match):
        yield f"spec.config.match.{key}", _plain(hook.match[key])
    if hook.scope is not None:  # one field: adding or removing a key changes whom filtered events reach
        yield "spec.config.scope", _plain(hook.scope)
    if hook.retry is not None:
        yield "spec.retry_countdown_config.choice", _plain(hook.retry.choice)
        for key in sorted(hook.retry.kwargs):
            yield f"spec.retry_countdown_config.kwargs.{key}", _plain(hook.retry.kwargs[key])
        if hook.retry.max_attempts is not None:
            yield "spec.retry_countdown_config.max_attempts", _plain(hook.retry.max_attempts)
        yield "spec.retry_countdown_config.jitter", _plain(hook.retry.jitter)
    if hook.callback is not None:
        yield "spec.callback.url", _url(hook.callback.url)
        yield "spec.callback.on", _plain(sorted(hook.callback.on))
    for key in sorted(hook.labels):
        yield f"metadata.labels.{key}", _plain(hook.labels[key])


def _json_value(value: Any) -> Any:
    """Normalise to what YAML would show: tuples as lists, integral floats (10.0 seconds) as ints."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, frozenset | set):
        return sorted(_json_value(v) for v in value)
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    return value


def _diff(old: Mapping[str, _Field], new: Mapping[str, _Field]) -> tuple[FieldChange, ...]:
    # New-file order first, then what disappeared, each in YAML order: a removed header sits at the end of its
    # webhook's list, which keeps the order deterministic without a second ordering scheme.
    out: list[FieldChange] = []
    for path, after in new.items():
        before = old.get(path)
        if before is None:
            out.append(_change(path, Action.ADD, None, after))
        elif before.compared != after.compared:
            out.append(_change(path, Action.CHANGE, before, after))
    out.extend(_change(path, Action.REMOVE, before, None) for path, before in old.items() if path not in new)
    return tuple(out)


def _change(path: str, action: Action, before: _Field | None, after: _Field | None) -> FieldChange:
    sides = [f for f in (before, after) if f is not None]
    # Also sensitive when only the hidden part changed (a password inside a URL): showing two equal redacted
    # values would read as "no change".
    hidden = any(f.sensitive for f in sides) or (
        before is not None and after is not None and before.shown == after.shown
    )
    if hidden:
        return FieldChange(path, action, sensitive=True)
    return FieldChange(
        path,
        action,
        before.shown if before is not None else None,
        after.shown if after is not None else None,
    )


# --- rendering ---------------------------------------------------------------------------------------------


def render_plan_text(plan: Plan) -> str:
    """Terraform-like text: one header line per webhook, its fields indented, then the summary line."""
    lines: list[str] = []
    for change in plan.changes:
        lines.append(f"{change.action.symbol} {change.name} ({change.file})")
        lines.extend(f"    {_field_text(f)}" for f in change.fields)
    if plan.is_empty:
        lines.append("No changes.")
    else:
        lines.append("")
    lines.append(plan.summary())
    return "\n".join(lines) + "\n"


def _field_text(change: FieldChange) -> str:
    head = f"{change.action.symbol} {change.path}:"
    if change.sensitive:
        return f"{head} {CHANGED if change.action is Action.CHANGE else REDACTED}"
    if change.action is Action.ADD:
        return f"{head} {_show(change.new)}"
    if change.action is Action.REMOVE:
        return f"{head} {_show(change.old)}"
    return f"{head} {_show(change.old)} → {_show(change.new)}"


def _show(value: Any) -> str:
    # JSON quoting escapes CR/LF, so a value can never start a new output line (or a GitHub workflow command).
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def plan_to_json(plan: Plan) -> dict[str, Any]:
    """The plan as a JSON-ready dict; sensitive fields carry ``"sensitive": true`` and no values."""
    return {
        "add": plan.count(Action.ADD),
        "change": plan.count(Action.CHANGE),
        "remove": plan.count(Action.REMOVE),
        "changes": [
            {
                "action": c.action.value,
                "name": c.name,
                "file": c.file,
                "fields": [_field_json(f) for f in c.fields],
            }
            for c in plan.changes
        ],
    }


def _field_json(change: FieldChange) -> dict[str, Any]:
    out: dict[str, Any] = {"path": change.path, "action": change.action.value}
    if change.sensitive:
        out["sensitive"] = True
        return out
    if change.action is not Action.ADD:
        out["old"] = change.old
    if change.action is not Action.REMOVE:
        out["new"] = change.new
    return out
