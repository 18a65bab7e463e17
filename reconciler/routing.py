"""The routing table: which active webhooks an event reaches.

Event-type patterns are dot-separated. ``*`` matches exactly one segment; a trailing ``.**`` matches one or
more remaining segments; a lone ``*`` (or ``**``) matches every event type. Patterns are indexed in a segment
trie, so routing cost depends on the depth of the event type, not on the number of webhooks.

An event's ``filter`` then meets two rules, read from opposite sides (both hold when a webhook has both):

- ``config.match`` (ours): the webhook names key/values the event must carry. A webhook with a match never
  receives an event without a filter; one without a match receives every event, filtered or not.
- ``config.scope`` (the OMS's: dj-whisperer's ``deliver_event(config_filter={k: v})`` selects the hooks whose
  ``config`` has ``k == v``): the event names key/values the webhook must carry. An event without a filter
  reaches every webhook whatever its scope; a filtered one reaches only webhooks whose scope has every filter
  key with an equal value, so ``scope: {}`` receives unfiltered events only. No scope at all: the rule is off.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from reconciler.fastschema import json_equal
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


def scope_admits(scope: Mapping[str, Any] | None, event_filter: Mapping[str, Any] | None) -> bool:
    """Whether the OMS would deliver an event with ``event_filter`` to a hook whose config is ``scope``.

    None (no ``config.scope``) admits everything. Values compare as JSON values, as PostgreSQL's jsonb does
    for dj-whisperer's ``config__k=v``: ``3`` equals ``3.0`` but not ``"3"``, ``true`` is not ``1``.
    """
    if scope is None or not event_filter:
        return True
    return all(key in scope and json_equal(scope[key], want) for key, want in event_filter.items())


def admits(hook: Webhook, event_filter: Mapping[str, Any] | None) -> bool:
    """Whether an event's filter lets it reach ``hook`` (its ``config.match`` and ``config.scope``)."""
    return filter_matches(hook.match, event_filter) and scope_admits(hook.scope, event_filter)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class _Node:
    """One segment of the wildcard trie. Nodes are shared between tables: a patch copies the nodes on the
    path it changes and never mutates one that another table may be reading."""

    __slots__ = ("children", "here", "owner", "rest")

    def __init__(
        self,
        owner: object,
        children: dict[str, _Node] | None = None,
        here: tuple[str, ...] = (),
        rest: tuple[str, ...] = (),
    ) -> None:
        self.owner = owner  # the trie that may change this node in place (the one that made it)
        self.children: dict[str, _Node] = children if children is not None else {}
        self.here = here  # webhook names whose pattern ends at this node
        self.rest = rest  # names whose pattern continues with ".**" here

    def own(self, owner: object) -> _Node:
        """This node if ``owner`` made it, else a copy that ``owner`` may change."""
        return self if self.owner is owner else _Node(owner, dict(self.children), self.here, self.rest)


class _PatternTrie:
    """Pattern index. Built by ``add``; ``copy`` plus ``add``/``remove`` gives a new index that shares every
    part it does not change with the old one (which stays valid for its readers)."""

    __slots__ = ("_everything", "_exact", "_root", "_token")

    def __init__(self) -> None:
        self._token = object()
        self._root = _Node(self._token)
        self._everything: tuple[str, ...] = ()
        self._exact: dict[str, tuple[str, ...]] = {}  # most patterns have no wildcard: one dict lookup

    def copy(self) -> _PatternTrie:
        trie = _PatternTrie()
        trie._root = self._root.own(trie._token)
        trie._everything = self._everything
        trie._exact = dict(self._exact)
        return trie

    def add(self, pattern: str, *names: str) -> None:
        self._edit(pattern, lambda have: (*have, *names))

    def remove(self, pattern: str, name: str) -> None:
        self._edit(pattern, lambda names: tuple(n for n in names if n != name))

    def _edit(self, pattern: str, change: Callable[[tuple[str, ...]], tuple[str, ...]]) -> None:
        # Names are kept in tuples replaced on change, so a copied index never sees the other one's edits.
        if pattern in (_ONE, _REST):
            self._everything = change(self._everything)
            return
        if "*" not in pattern:
            names = change(self._exact.get(pattern, ()))
            if names:
                self._exact[pattern] = names
            else:
                self._exact.pop(pattern, None)
            return
        node = self._root  # always this trie's own (see ``copy``)
        segments = pattern.split(".")
        for i, segment in enumerate(segments):
            if segment == _REST and i == len(segments) - 1:
                node.rest = change(node.rest)
                return
            child = node.children.get(segment)
            child = child.own(self._token) if child is not None else _Node(self._token)
            node.children[segment] = node = child
        node.here = change(node.here)

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
    the current definition of a webhook with pending deliveries). ``patched`` derives the table of a slightly
    different set of webhooks from this one, sharing what did not change.
    """

    __slots__ = ("_trie", "_webhooks", "revision")

    def __init__(self, webhooks: Mapping[str, Webhook], revision: str) -> None:
        self._webhooks = dict(webhooks)
        self.revision = revision
        self._trie = _PatternTrie()
        by_pattern: dict[str, list[str]] = {}
        for hook in self._webhooks.values():
            if hook.active:
                for pattern in hook.event_types:
                    by_pattern.setdefault(pattern, []).append(hook.name)
        for pattern, names in by_pattern.items():
            self._trie.add(pattern, *names)

    @property
    def webhooks(self) -> Mapping[str, Webhook]:
        return self._webhooks

    def get(self, name: str) -> Webhook | None:
        return self._webhooks.get(name)

    def route(self, event_type: str, event_filter: Mapping[str, Any] | None = None) -> tuple[Webhook, ...]:
        """Active webhooks that an event of this type (and filter) reaches, sorted by name."""
        names = sorted(self._trie.names(event_type))
        hooks = (self._webhooks[n] for n in names)
        return tuple(h for h in hooks if admits(h, event_filter))

    def patched(self, webhooks: Mapping[str, Webhook], revision: str) -> RoutingTable:
        """The table of ``webhooks``, built by changing only the webhooks that differ from this table's.

        A webhook is unchanged when it is the very same object (the loader reuses the values of unchanged
        files), so finding the changes costs one dict lookup per webhook. This table is not modified.
        """
        removed, added = changed_webhooks(self._webhooks, webhooks)
        if len(removed) + len(added) > max(64, len(webhooks) // 4):
            return RoutingTable(webhooks, revision)  # a large change: building afresh is as cheap
        table = RoutingTable.__new__(RoutingTable)
        table._webhooks = dict(webhooks)
        table.revision = revision
        table._trie = trie = self._trie.copy()
        for hook in removed:
            if hook.active:
                for pattern in dict.fromkeys(hook.event_types):
                    trie.remove(pattern, hook.name)
        for hook in added:
            if hook.active:
                for pattern in hook.event_types:
                    trie.add(pattern, hook.name)
        return table

    def __len__(self) -> int:
        return len(self._webhooks)

    def __repr__(self) -> str:
        return f"RoutingTable(revision={self.revision!r}, webhooks={len(self._webhooks)})"


def changed_webhooks(
    before: Mapping[str, Webhook], after: Mapping[str, Webhook]
) -> tuple[list[Webhook], list[Webhook]]:
    """(webhooks of ``before`` not in ``after``, webhooks of ``after`` not in ``before``), where the same
    webhook is the same object (what the loader reuses for unchanged files); a changed one is in both."""
    # map/compress keep the loop over 10,000 webhooks in C: this runs on every reload.
    gone = itertools.compress(before.values(), map(operator.is_not, map(after.get, before), before.values()))
    new = itertools.compress(after.values(), map(operator.is_not, map(before.get, after), after.values()))
    return list(gone), list(new)


def build_routing_table(webhooks: Iterable[Webhook], revision: str) -> RoutingTable:
    """Build a routing table; names are expected to be unique (the loader reports duplicates)."""
    return RoutingTable({h.name: h for h in webhooks}, revision)
