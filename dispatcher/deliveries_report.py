"""What ``dispatch deliveries`` and ``dispatch callbacks`` print (list and show), as swappable reporters.

Pure: store records in, the whole output out (the CLI echoes it as it is). ``TextReporter`` passes every
string another party chose (webhook names, event types, receiver answers, errors, payloads) through
``dispatcher.terminal.visible`` and writes times in the local zone (or ``tz``); ``JsonReporter`` writes the
records as indented JSON, escaped by the encoder.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime, tzinfo
from typing import Any, Protocol

from dispatcher.store.base import (
    AttemptLog,
    Callback,
    CallbackDetail,
    Delivery,
    DeliveryDetail,
    DeliveryStatus,
)
from dispatcher.terminal import visible

#: Characters of a response excerpt ``show`` prints in text (JSON holds all of what the store kept).
TEXT_EXCERPT_CHARS = 200


class Reporter(Protocol):
    """The four outputs of ``dispatch deliveries`` and ``dispatch callbacks``, each ending in a newline."""

    def delivery_list(self, rows: Sequence[Delivery]) -> str:
        """``deliveries list``: the deliveries in the order given (the store's newest first)."""
        ...

    def delivery(self, detail: DeliveryDetail, callbacks: Sequence[Callback]) -> str:
        """``deliveries show``: one delivery, its attempts, the callbacks reporting on it (newest first)."""
        ...

    def callback_list(self, rows: Sequence[Callback]) -> str:
        """``callbacks list``: the callbacks in the order given."""
        ...

    def callback(self, detail: CallbackDetail) -> str:
        """``callbacks show``: one callback, the outcome record it POSTs, and its attempts."""
        ...


# --- JSON ---------------------------------------------------------------------------------------------------


def delivery_json(d: Delivery) -> dict[str, Any]:
    """One delivery as a JSON object (``deliveries list`` and the head of ``deliveries show``)."""
    return {
        "id": d.id,
        "event_uuid": d.event_uuid,
        "event_type": d.event_type,
        "webhook": d.webhook,
        "status": d.status.value,
        "attempts": d.attempts,
        "created_at": d.created_at,
        "updated_at": d.updated_at,
        "next_attempt_at": d.next_attempt_at,
        "last_status_code": d.last_status_code,
        "last_error": d.last_error,
        "dead_reason": d.dead_reason,
    }


def callback_json(c: Callback) -> dict[str, Any]:
    """One callback as a JSON object (its URL is never shown: it may hold a token)."""
    return {
        "id": c.id,
        "webhook": c.webhook,
        "delivery_id": c.delivery_id,
        "outcome": c.label,
        "status": c.status.value,
        "attempts": c.attempts,
        "created_at": c.created_at,
        "updated_at": c.updated_at,
        "next_attempt_at": c.next_attempt_at,
        "last_status_code": c.last_status_code,
        "last_error": c.last_error,
        "dead_reason": c.dead_reason,
    }


def attempts_json(attempts: Sequence[AttemptLog]) -> list[dict[str, Any]]:
    """Every attempt as a JSON object, oldest first."""
    return [
        {
            "number": a.number,
            "started_at": a.started_at,
            "duration_seconds": a.duration_seconds,
            "status_code": a.status_code,
            "error": a.error,
            "response_headers": a.response_headers,
            "response_excerpt": a.response_excerpt,
        }
        for a in attempts
    ]


def _dumps(value: object) -> str:
    return json.dumps(value, indent=2) + "\n"


class JsonReporter:
    """The records as indented JSON (times as unix seconds, strings escaped by the encoder)."""

    def delivery_list(self, rows: Sequence[Delivery]) -> str:
        return _dumps([delivery_json(d) for d in rows])

    def delivery(self, detail: DeliveryDetail, callbacks: Sequence[Callback]) -> str:
        doc = delivery_json(detail.delivery)
        doc["callbacks"] = [callback_json(c) for c in callbacks]
        doc["attempt_log"] = attempts_json(detail.attempts)
        return _dumps(doc)

    def callback_list(self, rows: Sequence[Callback]) -> str:
        return _dumps([callback_json(c) for c in rows])

    def callback(self, detail: CallbackDetail) -> str:
        doc = callback_json(detail.callback)
        doc["payload"] = _payload(detail)
        doc["attempt_log"] = attempts_json(detail.attempts)
        return _dumps(doc)


def _payload(detail: CallbackDetail) -> str:
    return detail.payload.decode("utf-8", "replace")


# --- text ---------------------------------------------------------------------------------------------------

_ROW_HEAD = f"{'ID':>8}  {'STATUS':<9}  {'ATT':>3}  {'LAST':>4}  {'WEBHOOK':<24}"


class TextReporter:
    """Columns for lists, indented fields for ``show``; times in ``tz`` (None: the local zone)."""

    def __init__(self, tz: tzinfo | None = None) -> None:
        self.tz = tz

    def when(self, ts: float | None) -> str:
        """A time as ``2026-11-28 10:00:00+0100``, or ``-`` when there is none."""
        if ts is None:
            return "-"
        return datetime.fromtimestamp(ts, self.tz).astimezone(self.tz).strftime("%Y-%m-%d %H:%M:%S%z")

    def delivery_list(self, rows: Sequence[Delivery]) -> str:
        lines = [f"{_ROW_HEAD}  {'EVENT':<28}  CREATED"]
        lines += [f"{_row_head(d)}  {visible(d.event_type):<28}  {self.when(d.created_at)}" for d in rows]
        return _text(lines)

    def delivery(self, detail: DeliveryDetail, callbacks: Sequence[Callback]) -> str:
        d = detail.delivery
        event = f"  event:        {visible(d.event_type)} {visible(d.event_uuid)}"
        lines = self._summary("delivery", d, event)
        lines += self._attempts(detail.attempts)
        for c in reversed(callbacks):  # oldest first, like the attempts
            lines.append(
                f"  callback {c.id}: reports {visible(c.label)}, {c.status.value}, {c.attempts} attempt(s)"
                + (f", next {self.when(c.next_attempt_at)}" if c.next_attempt_at is not None else "")
            )
        return _text(lines)

    def callback_list(self, rows: Sequence[Callback]) -> str:
        lines = [f"{_ROW_HEAD}  {'OUTCOME':<9}  {'DELIVERY':>8}  NEXT ATTEMPT"]
        lines += [
            f"{_row_head(c)}  {visible(c.label):<9}  {c.delivery_id:>8}  {self.when(c.next_attempt_at)}"
            for c in rows
        ]
        return _text(lines)

    def callback(self, detail: CallbackDetail) -> str:
        c = detail.callback
        reports = f"  reports:      {visible(c.label)} of delivery {c.delivery_id}"
        lines = self._summary("callback", c, reports)
        lines.append(f"  payload:      {visible(_payload(detail))}")
        lines += self._attempts(detail.attempts)
        return _text(lines)

    def _summary(self, kind: str, r: Delivery | Callback, detail: str) -> list[str]:
        """The opening lines of ``show``; ``detail`` is the line after the webhook's."""
        lines = [
            f"{kind} {r.id}: {r.status.value}, {r.attempts} attempt(s)",
            f"  webhook:      {visible(r.webhook)}",
            detail,
            f"  created:      {self.when(r.created_at)}",
        ]
        if r.status in (DeliveryStatus.PENDING, DeliveryStatus.FAILED):
            lines.append(f"  next attempt: {self.when(r.next_attempt_at)}")
        if r.dead_reason:
            lines.append(f"  dead reason:  {visible(r.dead_reason)}")
        return lines

    def _attempts(self, attempts: Sequence[AttemptLog]) -> list[str]:
        """Every attempt; what the receiver sent (excerpt, header names and values, error) made visible."""
        lines: list[str] = []
        for a in attempts:
            status = str(a.status_code) if a.status_code is not None else "-"
            milliseconds = a.duration_seconds * 1000
            lines.append(f"  #{a.number} {self.when(a.started_at)}  status {status}  {milliseconds:.1f} ms")
            if a.error:
                lines.append(f"      error: {visible(a.error)}")
            lines += [f"      header: {visible(n)}: {visible(v)}" for n, v in a.response_headers.items()]
            if a.response_excerpt:
                excerpt = a.response_excerpt[:TEXT_EXCERPT_CHARS]
                more = " ..." if len(a.response_excerpt) > TEXT_EXCERPT_CHARS else ""
                lines.append(f"      response: {visible(excerpt)}{more}")
        return lines


def _row_head(r: Delivery | Callback) -> str:
    """The columns both lists share, under ``_ROW_HEAD``."""
    last = str(r.last_status_code) if r.last_status_code is not None else "-"
    return f"{r.id:>8}  {r.status.value:<9}  {r.attempts:>3}  {last:>4}  {visible(r.webhook):<24}"


def _text(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


#: ``--format`` values and their reporters.
REPORTERS: dict[str, Callable[[], Reporter]] = {"text": TextReporter, "json": JsonReporter}
