"""The routing table: which active webhooks an event reaches.

Event-type patterns are dot-separated. ``*`` matches exactly one segment; a trailing ``.**`` matches one or
more remaining segments; a lone ``*`` (or ``**``) matches every event type. Patterns are indexed in a segment
trie, so routing cost depends on the depth of the event type, not on the number of webhooks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.model import Webhook

_REST = "**"
_ONE = "*"


def pattern_matches(pattern: str, event_type: str) -> bool:
    """Whether one event-type pattern matches one event type."""
    if pattern in (_ONE, _REST):
        return True
    want = pattern.split(".")
    have = event_type.split(".")
    if want[-1] == _REST:
        head = want[:-1]
        return len(have) > len(head) and _segments_match(head, have[: len(head)])
    return len(want) == len(have) and _segments_match(want, have)


def _segments_match(want: list[str], have: list[str]) -> bool:
    return all(w in (_ONE, h) for w, h in zip(want, have, strict=True))


def filter_matches(match: Mapping[str, Any], event_filter: Mapping[str, Any] | None) -> bool:
    """Whether an event's ``filter`` carries every key/value of a webhook's ``config.match``.

    Values compare as JSON values: ``3`` does not equal ``"3"`` and ``true`` does not equal ``1``.
    """
    if not match:
        return True
    if not event_filter:
        return False
    for key, want in match.items():
        if key not in event_filter:
            return False
        have = event_filter[key]
        if type(have) is not type(want) and not (_is_number(have) and _is_number(want)):
            return False
        if have != want:
            return False
    return True


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class _Node:
    children: dict[str, _Node] = field(default_factory=dict)
    here: list[str] = field(default_factory=list)  # webhook names whose pattern ends at this node
    rest: list[str] = field(default_factory=list)  # names whose pattern continues with ".**" here


class _PatternTrie:
    def __init__(self) -> None:
        self._root = _Node()
        self._everything: list[str] = []
        self._exact: dict[str, list[str]] = {}  # most patterns have no wildcard: one dict lookup

    def add(self, pattern: str, name: str) -> None:
        if pattern in (_ONE, _REST):
            self._everything.append(name)
            return
        if "*" not in pattern:
            self._exact.setdefault(pattern, []).append(name)
            return
        node = self._root
        segments = pattern.split(".")
        for i, segment in enumerate(segments):
            if segment == _REST and i == len(segments) - 1:
                node.rest.append(name)
                return
            node = node.children.setdefault(segment, _Node())
        node.here.append(name)

    def names(self, event_type: str) -> set[str]:
        found = set(self._everything)
        found.update(self._exact.get(event_type, ()))
        if self._root.children:
            self._walk(self._root, event_type.split("."), 0, found)
        return found

    def _walk(self, node: _Node, segments: list[str], i: int, found: set[str]) -> None:
        if i == len(segments):
            found.update(node.here)
            return
        found.update(node.rest)  # ".**" needs at least one more segment, and there is one
        for key in (segments[i], _ONE):
            child = node.children.get(key)
            if child is not None:
                self._walk(child, segments, i + 1, found)


class RoutingTable:
    """An immutable routing table built from a set of webhooks (active and inactive).

    ``route`` returns only active webhooks; ``get`` returns any webhook by name (the dispatcher uses it for
    the current definition of a webhook with pending deliveries).
    """

    def __init__(self, webhooks: Mapping[str, Webhook], revision: str) -> None:
        self._webhooks = dict(webhooks)
        self.revision = revision
        self._trie = _PatternTrie()
        for hook in self._webhooks.values():
            if hook.active:
                for pattern in hook.event_types:
                    self._trie.add(pattern, hook.name)

    @property
    def webhooks(self) -> Mapping[str, Webhook]:
        return self._webhooks

    def get(self, name: str) -> Webhook | None:
        return self._webhooks.get(name)

    def route(self, event_type: str, event_filter: Mapping[str, Any] | None = None) -> tuple[Webhook, ...]:
        """Active webhooks that an event of this type (and filter) reaches, sorted by name."""
        names = sorted(self._trie.names(event_type))
        hooks = (self._webhooks[n] for n in names)
        return tuple(h for h in hooks if filter_matches(h.match, event_filter))

    def __len__(self) -> int:
        return len(self._webhooks)

    def __repr__(self) -> str:
        return f"RoutingTable(revision={self.revision!r}, webhooks={len(self._webhooks)})"


def build_routing_table(webhooks: Iterable[Webhook], revision: str) -> RoutingTable:
    """Build a routing table; names are expected to be unique (the loader reports duplicates)."""
    return RoutingTable({h.name: h for h in webhooks}, revision)
