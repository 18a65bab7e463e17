"""Undelivered ``WebhookEvent`` rows as ``dispatch publish`` lines (``reconcile import --events``). Pure."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping

from reconciler.importrows import Problems, Row, json_field, shown

_HEX32 = re.compile(r"[0-9a-f]{32}")


def map_events(rows: list[Row], by_id: Mapping[str, tuple[str, str]], problems: Problems) -> Iterator[str]:
    """One ``dispatch publish`` line per undelivered event row, addressed to its one webhook."""
    seen: dict[str, Row] = {}
    for row in rows:
        if row.fields.get("delivered") is True:
            continue
        uuid = row.fields.get("uuid")
        normal = uuid.replace("-", "").lower() if isinstance(uuid, str) else ""
        if not _HEX32.fullmatch(normal):
            problems.error(row, f"event uuid {shown(uuid)} is not a UUID")
            continue
        hook = row.fields.get("webhook")
        hook_id = hook.get("id", hook.get("pk")) if isinstance(hook, dict) else hook
        target = by_id.get(str(hook_id)) if hook_id is not None else None
        if target is None:
            problems.error(row, f"event's webhook {shown(hook_id)} is not among the imported webhooks")
            continue
        name, event_type = target
        payload = json_field(row, "request_payload", None, problems)
        if isinstance(payload, dict) and isinstance(payload.get("event"), dict):
            envelope = {k: v for k, v in payload.items() if k not in ("filter", "webhook")}
            envelope["event"] = {**payload["event"], "uuid": normal}
            envelope["event"].setdefault("type", event_type)
        else:
            envelope = {"event": {"type": event_type, "uuid": normal}, "payload": payload}
        if normal in seen:
            problems.warning(
                row,
                f"uuid {normal} is also the uuid of {seen[normal].where}; the dispatcher accepts a uuid "
                "once, so only the first is delivered",
            )
        seen.setdefault(normal, row)
        yield json.dumps({**envelope, "webhook": name}, ensure_ascii=False, separators=(",", ":"))
