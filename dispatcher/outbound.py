"""What an attempt sends, without the HTTP client: the dispatcher's main process builds these and never
imports ``requests`` when the attempts run in child processes (``dispatcher.transport``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class OutboundRequest:
    """One POST to make. ``headers`` are sent as given (they may hold secrets: never logged)."""

    url: str
    body: bytes
    headers: dict[str, str]
    timeout_seconds: float
    basic_auth: tuple[str, str] | None = None


def json_request(url: str, payload: dict[str, Any], timeout_seconds: float) -> OutboundRequest:
    """A POST of ``payload`` as compact JSON with sorted keys (callbacks)."""
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return OutboundRequest(url, body, {"Content-Type": "application/json"}, timeout_seconds)
