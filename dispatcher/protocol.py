"""The event protocol (SPEC section 4): NDJSON envelopes in, one acknowledgement line out per input line.

Pure functions only: parsing a line, building the body that is POSTed, formatting acknowledgements.
"""

from __future__ import annotations

import json
import re
import uuid as uuidlib
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_LINE_BYTES = 1 << 20

_HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")
_DASHED = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
#: Top-level keys that steer routing and are not part of the delivered envelope.
_ROUTING_KEYS = ("filter", "webhook")


@dataclass(frozen=True)
class ParsedEvent:
    """One valid input line."""

    uuid: str  # 32 lowercase hex digits
    type: str
    body: bytes  # the envelope as delivered (routing keys removed, uuid filled in)
    filter: dict[str, Any] | None = None
    webhook: str | None = None


@dataclass(frozen=True)
class BadLine:
    """One input line that was rejected; ``error`` is safe to echo (never contains the line's content)."""

    line: int
    error: str


def normalise_uuid(value: Any) -> str | None:
    """32 lowercase hex digits from a 32-hex or dashed UUID string; None when it is neither."""
    if not isinstance(value, str):
        return None
    if _HEX32.match(value):
        return value.lower()
    if _DASHED.match(value):
        return value.replace("-", "").lower()
    return None


def parse_line(raw: bytes, line_no: int) -> ParsedEvent | BadLine:
    """Parse one NDJSON line (without its newline) into an event, or say precisely why not."""
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        return BadLine(line_no, f"not valid JSON: {_short(exc)}")
    if not isinstance(obj, dict):
        return BadLine(line_no, f"expected a JSON object, got {_json_kind(obj)}")
    event = obj.get("event")
    if not isinstance(event, dict):
        return BadLine(line_no, "missing 'event' object")
    event_type = event.get("type")
    if not isinstance(event_type, str) or not event_type.strip():
        return BadLine(line_no, "missing 'event.type' (a non-empty string)")
    if len(event_type) > 255 or any(c.isspace() for c in event_type):
        return BadLine(line_no, "'event.type' must be at most 255 characters without whitespace")
    raw_uuid = event.get("uuid")
    if raw_uuid is None:
        event_uuid = uuidlib.uuid4().hex
    else:
        normalised = normalise_uuid(raw_uuid)
        if normalised is None:
            return BadLine(line_no, "'event.uuid' must be 32 hex digits or a dashed UUID")
        event_uuid = normalised
    event_filter = obj.get("filter")
    if event_filter is not None and not isinstance(event_filter, dict):
        return BadLine(line_no, "'filter' must be a JSON object")
    webhook = obj.get("webhook")
    if webhook is not None and not isinstance(webhook, str):
        return BadLine(line_no, "'webhook' must be a webhook name (a string)")
    if raw_uuid is not None and "filter" not in obj and "webhook" not in obj:
        body = bytes(raw).strip()  # already the envelope as JSON: deliver the producer's own bytes
    else:
        body = build_body(obj, event_uuid if raw_uuid is None else raw_uuid)
    return ParsedEvent(uuid=event_uuid, type=event_type, body=body, filter=event_filter, webhook=webhook)


def build_body(envelope: dict[str, Any], event_uuid: str) -> bytes:
    """The bytes POSTed on every attempt: the envelope without routing keys, with ``event.uuid`` set."""
    body = {k: v for k, v in envelope.items() if k not in _ROUTING_KEYS}
    body["event"] = {**envelope["event"], "uuid": event_uuid}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def ack_accepted(event_uuid: str, deliveries: int) -> bytes:
    return b'{"ok":true,"uuid":"%s","deliveries":%d}\n' % (event_uuid.encode(), deliveries)


def ack_duplicate(event_uuid: str) -> bytes:
    return b'{"ok":true,"uuid":"%s","duplicate":true}\n' % event_uuid.encode()


def ack_rejected(line_no: int, error: str) -> bytes:
    return (json.dumps({"ok": False, "line": line_no, "error": error}) + "\n").encode()


def _short(exc: Exception) -> str:
    # json's messages carry a position but never the document itself; keep them short.
    return str(exc).split("\n", 1)[0][:200]


def _json_kind(obj: Any) -> str:
    if obj is None:
        return "null"
    if isinstance(obj, bool):
        return "a boolean"
    if isinstance(obj, int | float):
        return "a number"
    if isinstance(obj, str):
        return "a string"
    return "an array"
