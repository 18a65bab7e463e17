"""The OMS's routing rule (``config.scope``), and that an imported tree routes exactly as the OMS does."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dispatcher.config import Snapshot
from dispatcher.ingest import route_event
from dispatcher.protocol import ParsedEvent, parse_line
from dispatcher.store.base import NewEvent
from reconciler.explain import Outcome, explain_route, render_route_text, route_to_json
from reconciler.importer import build_import
from reconciler.loader import load_tree
from reconciler.model import Webhook
from reconciler.plan import build_plan
from reconciler.routing import RoutingTable, build_routing_table, scope_admits

FIXTURES = Path(__file__).parent / "fixtures" / "import"
EXPORTS = ("dumpdata.json", "rest-page.json", "rest-list.json")


def _jsonb(value: Any) -> Any:
    """A value as PostgreSQL's jsonb compares it: numbers by value, booleans apart from numbers."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return (type(value).__name__, value)
    if isinstance(value, int | float):
        return ("number", float(value))
    if isinstance(value, list):
        return ("array", tuple(_jsonb(v) for v in value))
    return ("object", tuple(sorted((k, _jsonb(v)) for k, v in value.items())))


@dataclass(frozen=True)
class OmsHook:
    """One dj-whisperer Webhook row, as the OMS's delivery code sees it."""

    pk: int
    event_type: str
    is_active: bool
    config: dict[str, Any]


def oms_rows() -> list[OmsHook]:
    rows: list[OmsHook] = []
    for name in EXPORTS:
        data = json.loads((FIXTURES / name).read_text())
        items = data["results"] if isinstance(data, dict) else data
        for item in items:
            fields, pk = (item["fields"], item["pk"]) if "fields" in item else (item, item["id"])
            config = fields["config"]
            config = json.loads(config) if isinstance(config, str) else config
            rows.append(OmsHook(pk, fields["event_type"], fields.get("is_active", True), config))
    return rows


def oms_deliver_event(rows: list[OmsHook], event_type: str, config_filter: dict[str, Any] | None) -> set[int]:
    """dj-whisperer's deliver_event: active hooks of the type, narrowed by ``config__k=v`` per filter key."""
    hooks = [r for r in rows if r.event_type == event_type and r.is_active]
    if config_filter:
        hooks = [
            r
            for r in hooks
            if all(k in r.config and _jsonb(r.config[k]) == _jsonb(v) for k, v in config_filter.items())
        ]
    return {r.pk for r in hooks}


EVENT_TYPES = (
    "package.created",
    "package.status.shipped",
    "shipment.created",
    "stock_location.updated",
    "transfer.status.in_transit",
    "order.created",  # no hook has it
)
FILTERS: tuple[dict[str, Any] | None, ...] = (
    None,
    {},
    {"channel_id": 3},
    {"channel_id": 3.0},
    {"channel_id": "3"},
    {"channel_id": 5},
    {"channel_id": 4},
    {"channel_id": None},
    {"channel_id": True},
    {"channel_id": 3, "warehouse": "ist-1"},
    {"warehouse": "ist-1"},
    {"channel_id": 3, "region": "marmara"},
    {"region": "marmara"},
    {"channel_id": 3, "priority": True},
    {"priority": 1},
    {"channel_ids": [3, 5]},
    {"channel_ids": [5, 3]},
    {"unknown_key": 1},
)


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> RoutingTable:
    """The fixtures imported and written out, then loaded back as the dispatcher would load them."""
    exports = [(name, json.loads((FIXTURES / name).read_text())) for name in EXPORTS]
    result = build_import(exports, with_events=False)
    assert result.ok, [f.render() for f in result.findings]
    out = tmp_path_factory.mktemp("imported")
    for hook in result.webhooks:
        (out / f"{hook.name}.yaml").write_text(hook.text)
    tree = load_tree(out)
    assert tree.valid and len(tree.webhooks) == len(oms_rows())
    return build_routing_table(tree.webhooks, tree.revision)


def _pks(hooks: tuple[Webhook, ...] | list[Webhook]) -> set[int]:
    return {int(h.labels["whisperer-id"]) for h in hooks}


@pytest.mark.parametrize(("event_type", "config_filter"), list(itertools.product(EVENT_TYPES, FILTERS)))
def test_imported_tree_routes_every_oms_case_as_the_oms(
    imported: RoutingTable, event_type: str, config_filter: dict[str, Any] | None
) -> None:
    """For each (event type, filter) the OMS sends, the imported tree reaches exactly the OMS's hooks."""
    expected = oms_deliver_event(oms_rows(), event_type, config_filter)
    assert _pks(imported.route(event_type, config_filter)) == expected


def test_the_table_exercises_both_outcomes(imported: RoutingTable) -> None:
    """The cases include deliveries and refusals for scoped, unscoped and inactive hooks (no vacuous pass)."""
    reached = {
        pk
        for event_type, config_filter in itertools.product(EVENT_TYPES, FILTERS)
        for pk in oms_deliver_event(oms_rows(), event_type, config_filter)
    }
    assert reached == {1, 2, 3, 5, 6, 7, 8, 9}  # all but the inactive hook 4
    assert oms_deliver_event(oms_rows(), "package.created", {"channel_id": 3}) == {1, 8}
    assert oms_deliver_event(oms_rows(), "package.created", None) == {1, 3, 5, 6, 8}


@pytest.mark.parametrize("config_filter", FILTERS)
def test_the_dispatcher_routes_published_events_as_the_oms(
    imported: RoutingTable, config_filter: dict[str, Any] | None
) -> None:
    """An NDJSON event line with the OMS's filter gets a delivery for exactly the OMS's hooks."""
    line: dict[str, Any] = {"event": {"type": "package.created"}, "payload": {"id": 1}}
    if config_filter is not None:
        line["filter"] = config_filter
    event = parse_line(json.dumps(line).encode(), 1)
    assert isinstance(event, ParsedEvent)
    routed = route_event(event, Snapshot(imported, {}, imported.revision), 1)
    assert isinstance(routed, NewEvent)
    names = set(routed.webhooks)
    expected = oms_deliver_event(oms_rows(), "package.created", config_filter)
    assert _pks([h for h in imported.webhooks.values() if h.name in names]) == expected


def test_route_explains_out_of_scope_webhooks(imported: RoutingTable) -> None:
    """The route test names the webhooks a filter leaves out because of their scope, and shows the scope."""
    route = explain_route(imported, "package.created", {"channel_id": 3})
    outcomes = {int(imported.webhooks[h.name].labels["whisperer-id"]): h for h in route.hits}
    assert {pk for pk, h in outcomes.items() if h.outcome is Outcome.DELIVER} == {1, 8}
    assert outcomes[3].outcome is Outcome.OUT_OF_SCOPE and outcomes[3].scope == {}
    assert outcomes[5].outcome is Outcome.OUT_OF_SCOPE and outcomes[5].scope == {"channel_id": "3"}


# --- the rule itself ---------------------------------------------------------------------------------------


def test_no_scope_admits_every_event() -> None:
    """Without config.scope the OMS rule is off: filtered and unfiltered events pass it."""
    assert scope_admits(None, None) and scope_admits(None, {"channel_id": 3})


def test_an_empty_scope_admits_only_unfiltered_events() -> None:
    """scope: {} is an OMS hook with no config keys: it gets unfiltered events and no filtered one."""
    assert scope_admits({}, None) and scope_admits({}, {})
    assert not scope_admits({}, {"channel_id": 3})


def test_a_scope_needs_every_filter_key_with_an_equal_json_value() -> None:
    """Every key of the filter must be in scope with the same JSON value; extra scope keys do not matter."""
    scope = {"channel_id": 3, "warehouse": "ist-1", "tags": ["a", "b"]}
    assert scope_admits(scope, {"channel_id": 3})
    assert scope_admits(scope, {"channel_id": 3.0, "tags": ["a", "b"]})
    assert not scope_admits(scope, {"channel_id": "3"})
    assert not scope_admits(scope, {"channel_id": 3, "region": "marmara"})
    assert not scope_admits({"flag": True}, {"flag": 1})
    assert not scope_admits(scope, {"tags": ["b", "a"]})


def test_match_and_scope_both_apply() -> None:
    """A webhook with both config.match and config.scope receives only events that satisfy both."""
    hook = Webhook("both", "https://example.com/in", ("package.created",), match={"a": 1}, scope={"a": 1})
    table = build_routing_table([hook], "r")
    assert [h.name for h in table.route("package.created", {"a": 1})] == ["both"]
    assert table.route("package.created", None) == ()  # match wants a filter
    assert table.route("package.created", {"a": 1, "b": 2}) == ()  # scope lacks b


def test_route_text_and_json_show_the_scope_that_left_a_webhook_out(imported: RoutingTable) -> None:
    """`reconcile --route` prints `skipped: config.scope {...}`; its JSON has the scope and the outcome."""
    route = explain_route(imported, "package.created", {"channel_id": 3})
    text = render_route_text(route)
    assert re.search(r"✗ carrier-example-net-package-created-3 .*skipped: config\.scope \{\}", text)
    assert 'skipped: config.scope {"channel_id": 5}' in text
    shown = {w["name"]: w for w in route_to_json(route)["webhooks"]}
    assert shown["carrier-example-net-package-created-3"]["outcome"] == "out-of-scope"
    assert shown["carrier-example-net-package-created-3"]["scope"] == {}
    assert "scope" not in shown["erp-example-com-package-created-1"]


def test_the_plan_shows_a_scope_appearing_or_changing() -> None:
    """Adding config.scope (even {}) or changing one of its values is a change in the plan."""
    base = Webhook("a", "https://example.com/in", ("package.created",))
    scoped = dataclasses.replace(base, scope={})
    changed = dataclasses.replace(base, scope={"channel_id": 3})
    for before, after in ((base, scoped), (scoped, changed)):
        plan = build_plan({"a": before}, {"a": after})
        assert [f.path for c in plan.changes for f in c.fields] == ["spec.config.scope"]
