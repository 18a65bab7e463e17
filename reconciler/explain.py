"""Route test: which webhooks an event would reach, and why the others that name its type would not.

Pure. The delivered set comes from ``RoutingTable.route`` itself, so the route test can never disagree with
what the dispatcher does; this module only adds the explanation (matching patterns, skip reasons).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from reconciler.redact import redact_url
from reconciler.routing import RoutingTable, filter_matches, pattern_matches, scope_admits


class Outcome(StrEnum):
    DELIVER = "deliver"
    INACTIVE = "inactive"  # its pattern matches, but ``spec.status`` is inactive
    FILTERED = "filtered"  # its pattern matches, but the event's filter lacks ``spec.config.match``
    OUT_OF_SCOPE = "out-of-scope"  # its pattern matches, but the filter asks for more than ``config.scope``


@dataclass(frozen=True)
class RouteHit:
    name: str
    target_url: str  # redacted: a route test must not print a token embedded in a URL
    file: str
    patterns: tuple[str, ...]  # the webhook's event_type patterns that match the event type
    outcome: Outcome
    match: dict[str, Any] = field(default_factory=dict)  # the webhook's config.match (shown when FILTERED)
    scope: dict[str, Any] | None = None  # the webhook's config.scope (shown when OUT_OF_SCOPE)


@dataclass(frozen=True)
class RouteExplanation:
    event_type: str
    event_filter: dict[str, Any] | None
    hits: tuple[RouteHit, ...]  # every webhook whose patterns match, sorted by name

    @property
    def delivered(self) -> tuple[RouteHit, ...]:
        return tuple(h for h in self.hits if h.outcome is Outcome.DELIVER)

    @property
    def skipped(self) -> tuple[RouteHit, ...]:
        return tuple(h for h in self.hits if h.outcome is not Outcome.DELIVER)


def explain_route(
    table: RoutingTable, event_type: str, event_filter: Mapping[str, Any] | None = None
) -> RouteExplanation:
    """Explain where an event of ``event_type`` carrying ``event_filter`` would be delivered."""
    delivered = {hook.name for hook in table.route(event_type, event_filter)}
    hits: list[RouteHit] = []
    for name in sorted(table.webhooks):
        hook = table.webhooks[name]
        patterns = tuple(p for p in hook.event_types if pattern_matches(p, event_type))
        if not patterns:
            continue
        if name in delivered:
            outcome = Outcome.DELIVER
        elif not hook.active:
            outcome = Outcome.INACTIVE
        elif not filter_matches(hook.match, event_filter):
            outcome = Outcome.FILTERED
        elif not scope_admits(hook.scope, event_filter):
            outcome = Outcome.OUT_OF_SCOPE
        else:  # pragma: no cover - would mean the table and pattern_matches disagree
            raise AssertionError(f"route of {name!r} for {event_type!r} is inconsistent")
        url = redact_url(hook.target_url)
        hits.append(RouteHit(name, url, hook.source.file, patterns, outcome, hook.match, hook.scope))
    return RouteExplanation(event_type, dict(event_filter) if event_filter is not None else None, tuple(hits))


def render_route_text(route: RouteExplanation) -> str:
    """One line per matching webhook (delivered first), then a one-line summary."""
    shown_filter = f" with filter {_compact(route.event_filter)}" if route.event_filter else ""
    lines = [f"Route {route.event_type}{shown_filter}:"]
    for hit in route.delivered:
        lines.append(f"  → {hit.name}  {hit.target_url}  (matched {_patterns(hit)})")
    for hit in route.skipped:
        reason = {
            Outcome.INACTIVE: "inactive",
            Outcome.FILTERED: f"config.match {_compact(hit.match)}",
            Outcome.OUT_OF_SCOPE: f"config.scope {_compact(hit.scope)}",
        }[hit.outcome]
        lines.append(f"  ✗ {hit.name}  {hit.target_url}  (matched {_patterns(hit)}; skipped: {reason})")
    reached = len(route.delivered)
    skipped = f", {len(route.skipped)} skipped" if route.skipped else ""
    lines.append(f"{route.event_type} reaches {reached} webhook{'' if reached == 1 else 's'}{skipped}.")
    return "\n".join(lines) + "\n"


def _patterns(hit: RouteHit) -> str:
    return ", ".join(json.dumps(p) for p in hit.patterns)


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(", ", ": "))


def route_to_json(route: RouteExplanation) -> dict[str, Any]:
    """The route test as a JSON-ready dict."""
    return {
        "event_type": route.event_type,
        "filter": route.event_filter,
        "delivered": len(route.delivered),
        "webhooks": [
            {
                "name": h.name,
                "target_url": h.target_url,
                "file": h.file,
                "patterns": list(h.patterns),
                "outcome": h.outcome.value,
                **({"match": h.match} if h.outcome is Outcome.FILTERED else {}),
                **({"scope": h.scope} if h.outcome is Outcome.OUT_OF_SCOPE else {}),
            }
            for h in route.hits
        ],
    }
