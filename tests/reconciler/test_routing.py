"""The routing table, and tables derived from another one by ``patched``."""

from __future__ import annotations

import dataclasses
from typing import Any

from reconciler.model import Webhook
from reconciler.routing import RoutingTable, build_routing_table

EVENT_TYPES = (
    "package.created",
    "package.status.shipped",
    "package.status.created",
    "shipment.created",
    "shipment.status.delivered",
    "transfer.status.in_transit",
    "order.created",
)
PATTERNS = (
    ("package.created",),
    ("package.status.*",),
    ("shipment.**",),
    ("*",),
    ("package.created", "shipment.created"),
    ("transfer.status.in_transit", "package.status.*"),
    ("**",),
)


def hook(i: int, **changes: Any) -> Webhook:
    base = Webhook(f"hook-{i:03d}", f"https://example.com/{i}", PATTERNS[i % len(PATTERNS)])
    return dataclasses.replace(base, **changes) if changes else base


def routes(table: RoutingTable) -> dict[str, list[str]]:
    return {event: [h.name for h in table.route(event)] for event in EVENT_TYPES}


def test_a_patched_table_routes_like_a_table_built_afresh() -> None:
    """Changing, deactivating, removing and adding webhooks gives the routes of a fresh build."""
    before = {h.name: h for h in (hook(i) for i in range(100))}
    old = RoutingTable(before, "r1")
    old_routes = routes(old)
    after = dict(before)
    after["hook-003"] = hook(3, event_types=("order.created", "order.created"))
    after["hook-006"] = hook(6, active=False)
    del after["hook-010"], after["hook-002"]
    after["hook-500"] = hook(500, event_types=("package.status.*", "shipment.**"))
    after["hook-501"] = hook(501, active=False)

    patched = old.patched(after, "r2")

    assert routes(patched) == routes(RoutingTable(after, "r2"))
    assert patched.revision == "r2"
    assert dict(patched.webhooks) == after
    assert routes(old) == old_routes  # the table readers may still hold is untouched
    assert old.get("hook-010") is not None and patched.get("hook-010") is None


def test_successive_patches_keep_every_earlier_table_intact() -> None:
    """Each table in a chain of patches keeps routing as it did when it was made."""
    tables = [RoutingTable({h.name: h for h in (hook(i) for i in range(20))}, "r0")]
    expected = [routes(tables[0])]
    for step in range(1, 6):
        webhooks = dict(tables[-1].webhooks)
        webhooks[f"hook-{step:03d}"] = hook(step, event_types=PATTERNS[(step + 3) % len(PATTERNS)])
        webhooks.pop(f"hook-{step + 10:03d}")
        tables.append(tables[-1].patched(webhooks, f"r{step}"))
        assert routes(tables[-1]) == routes(RoutingTable(webhooks, f"r{step}"))
        expected.append(routes(tables[-1]))
    assert [routes(t) for t in tables] == expected


def test_a_large_change_is_built_afresh_with_the_same_routes() -> None:
    """Replacing most webhooks gives the same routes as building the table from scratch."""
    old = build_routing_table((hook(i) for i in range(200)), "r1")
    new = {h.name: h for h in (hook(i, event_types=("order.created",)) for i in range(150))}
    assert routes(old.patched(new, "r2")) == routes(RoutingTable(new, "r2"))
