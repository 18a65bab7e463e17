"""``dispatch store copy``: move the open deliveries of one store into another (SQLite to PostgreSQL, say).

Only through the ``Store`` contract, so any pair of backends works. Each open (pending or failed)
delivery becomes a delivery of the same event (same uuid, type and body, so the same ``webhook-id``) to the
same webhook in the destination, due at once with a fresh schedule; its attempt history stays in the
source. The destination's dedupe makes a second run harmless: events it already has are skipped. Unless
kept, the copied deliveries are then marked dead in the source with the reason ``moved to <store>`` (not
deleted: ``deliveries list --status dead`` shows what was moved), so a dispatcher started on the old store
by mistake does not deliver them again. Stop the dispatchers of the source first (a SQLite source is
locked for the copy; leased deliveries of a PostgreSQL source are copied but left as they are).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from dispatcher.store.base import OPEN_STATUSES, Delivery, DeliveryQuery, NewEvent, Store

#: Events per destination transaction.
BATCH = 500
#: Open deliveries listed at once (the listing is newest first, by status).
_LIST_ALL = 10**9


@dataclass(frozen=True)
class CopyResult:
    events: int  # events stored in the destination
    deliveries: int  # deliveries created there
    duplicates: int  # events the destination had already (skipped)
    moved_off: int  # source deliveries marked dead as moved


def _open_by_event(source: Store) -> dict[str, list[Delivery]]:
    grouped: dict[str, list[Delivery]] = {}
    for status in OPEN_STATUSES:
        for delivery in source.list_deliveries(DeliveryQuery(status=status, limit=_LIST_ALL)):
            grouped.setdefault(delivery.event_uuid, []).append(delivery)
    return grouped


def _events(source: Store, grouped: dict[str, list[Delivery]]) -> Iterator[NewEvent]:
    """One event per uuid with every webhook it still has open deliveries to, oldest first."""
    for uuid, deliveries in sorted(grouped.items(), key=lambda kv: min(d.created_at for d in kv[1])):
        detail = source.get_delivery(deliveries[0].id)
        if detail is None:  # pruned or moved meanwhile
            continue
        webhooks = tuple(dict.fromkeys(d.webhook for d in sorted(deliveries, key=lambda d: d.id)))
        yield NewEvent(uuid, detail.delivery.event_type, detail.body, webhooks)


def copy_open(
    source: Store, destination: Store, now: float, *, moved_to: str, keep: bool = False
) -> CopyResult:
    """Copy every open delivery of ``source`` into ``destination``; unless ``keep``, mark them dead in the
    source as ``moved to <moved_to>`` (a redacted store name)."""
    grouped = _open_by_event(source)
    events = deliveries = duplicates = 0
    batch: list[NewEvent] = []

    def flush() -> None:
        nonlocal events, deliveries, duplicates
        for result in destination.enqueue(batch, now):
            if result.duplicate:
                duplicates += 1
            else:
                events += 1
                deliveries += len(result.delivery_ids)
        batch.clear()

    for event in _events(source, grouped):
        batch.append(event)
        if len(batch) >= BATCH:
            flush()
    if batch:
        flush()
    moved_off = 0
    if not keep:
        webhooks = sorted({d.webhook for ds in grouped.values() for d in ds})
        for webhook in webhooks:
            moved_off += source.bury_webhook(webhook, f"moved to {moved_to}", now)
    return CopyResult(events, deliveries, duplicates, moved_off)
