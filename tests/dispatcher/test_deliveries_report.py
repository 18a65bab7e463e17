"""The reporters of ``dispatch deliveries`` and ``dispatch callbacks``: exact text, JSON, no raw escapes."""

from __future__ import annotations

import json
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import dispatcher.cli as cli
from dispatcher.deliveries_report import REPORTERS, JsonReporter, TextReporter
from dispatcher.store.base import (
    AttemptLog,
    Callback,
    CallbackDetail,
    Delivery,
    DeliveryDetail,
    DeliveryQuery,
    DeliveryStatus,
)

T = 1_764_000_000.0  # 2025-11-24 16:00:00 UTC
HOSTILE = "a\x1b]0;owned\x07\r\u202eb\\"
SHOWN = "a\\x1b]0;owned\\x07\\r\\u202eb\\\\"  # what `visible` makes of it

DELIVERED = Delivery(1, "ab" * 16, "package.created", "erp", DeliveryStatus.DELIVERED, 1, T, T + 1, None, 200)
FAILED = Delivery(
    22, "cd" * 16, "e." + HOSTILE, "w-" + HOSTILE, DeliveryStatus.FAILED, 2, T, T, T + 60, 503, "x"
)
DEAD = Delivery(
    3, "ef" * 16, "t", "erp", DeliveryStatus.DEAD, 8, T, T, None, None, "e", "max attempts " + HOSTILE
)
ATTEMPTS = (
    AttemptLog(1, T + 1, 0.0123, 500, None, {"Retry-After": "30", "X-" + HOSTILE: HOSTILE}, "no " + HOSTILE),
    AttemptLog(2, T + 2, 1.5, None, "refused " + HOSTILE, {}, ""),
    AttemptLog(3, T + 3, 0.0, 200, None, {}, "z" * 201),
)
PENDING_CB = Callback(5, "erp", 22, "failed", DeliveryStatus.PENDING, 0, T, T, T + 10)
DEAD_CB = Callback(6, "erp", 22, "dead", DeliveryStatus.DEAD, 8, T, T, None, 500, "e", "gone " + HOSTILE)
UTC_TEXT = TextReporter(UTC)


def test_an_empty_delivery_list_is_the_header_alone() -> None:
    """No rows print the column header only; JSON prints an empty array."""
    header = "      ID  STATUS     ATT  LAST  WEBHOOK" + " " * 17 + "  EVENT" + " " * 23 + "  CREATED\n"
    assert UTC_TEXT.delivery_list([]) == header
    assert JsonReporter().delivery_list([]) == "[]\n"


def test_delivery_list_text_is_one_aligned_row_per_delivery() -> None:
    """Each delivery is a row of id, status, attempts, last status code, webhook, event and creation time."""
    lines = UTC_TEXT.delivery_list([DELIVERED, DEAD]).splitlines()
    assert lines[1] == (
        "       1  delivered    1   200  erp                       package.created               "
        "2025-11-24 16:00:00+0000"
    )
    assert lines[2].startswith("       3  dead         8     -  erp ")


def test_text_shows_what_other_parties_chose_without_terminal_escapes() -> None:
    """Webhook names, event types, errors, headers, excerpts, reasons and payloads reach the text escaped."""
    outputs = [
        UTC_TEXT.delivery_list([FAILED]),
        UTC_TEXT.delivery(DeliveryDetail(FAILED, b"{}", ATTEMPTS), [DEAD_CB]),
        UTC_TEXT.delivery(DeliveryDetail(DEAD, b"{}", ()), []),
        UTC_TEXT.callback_list([DEAD_CB, PENDING_CB]),
        UTC_TEXT.callback(CallbackDetail(DEAD_CB, HOSTILE.encode() + b"\xff", ATTEMPTS)),
    ]
    for text in outputs:
        assert not any(c in text for c in "\x1b\x07\r\u202e")
    assert SHOWN in outputs[0] and f"      header: X-{SHOWN}: {SHOWN}" in outputs[1]
    assert f"  dead reason:  max attempts {SHOWN}" in outputs[2]
    assert f"  payload:      {SHOWN}\ufffd" in outputs[4]


def test_delivery_show_text_lists_every_attempt_then_its_callbacks_oldest_first() -> None:
    """``show`` prints the summary, each attempt with status, duration, error, headers and an excerpt cut at
    200 characters, then the callbacks reporting on it, oldest first."""
    text = UTC_TEXT.delivery(DeliveryDetail(FAILED, b"{}", ATTEMPTS), [DEAD_CB, PENDING_CB])
    assert text == (
        "delivery 22: failed, 2 attempt(s)\n"
        f"  webhook:      w-{SHOWN}\n"
        f"  event:        e.{SHOWN} {'cd' * 16}\n"
        "  created:      2025-11-24 16:00:00+0000\n"
        "  next attempt: 2025-11-24 16:01:00+0000\n"
        "  #1 2025-11-24 16:00:01+0000  status 500  12.3 ms\n"
        "      header: Retry-After: 30\n"
        f"      header: X-{SHOWN}: {SHOWN}\n"
        f"      response: no {SHOWN}\n"
        "  #2 2025-11-24 16:00:02+0000  status -  1500.0 ms\n"
        f"      error: refused {SHOWN}\n"
        "  #3 2025-11-24 16:00:03+0000  status 200  0.0 ms\n"
        f"      response: {'z' * 200} ...\n"
        "  callback 5: reports failed, pending, 0 attempt(s), next 2025-11-24 16:00:10+0000\n"
        "  callback 6: reports dead, dead, 8 attempt(s)\n"
    )


def test_next_attempt_is_shown_only_while_attempts_are_due() -> None:
    """Delivered and dead records print no next-attempt line; pending and failed ones do."""
    assert "next attempt" not in UTC_TEXT.delivery(DeliveryDetail(DELIVERED, b"{}", ()), [])
    assert "next attempt" not in UTC_TEXT.callback(CallbackDetail(DEAD_CB, b"{}", ()))
    assert "  next attempt: 2025-11-24 16:00:10+0000\n" in UTC_TEXT.callback(
        CallbackDetail(PENDING_CB, b"", ())
    )


def test_callback_list_text_has_outcome_delivery_and_next_attempt_columns() -> None:
    """Each callback row ends with the outcome it reports, its delivery and when it is next sent (or -)."""
    lines = UTC_TEXT.callback_list([PENDING_CB, DEAD_CB]).splitlines()
    assert lines[0].endswith("OUTCOME    DELIVERY  NEXT ATTEMPT")
    assert lines[1].endswith("failed           22  2025-11-24 16:00:10+0000")
    assert lines[2].endswith("dead             22  -")


def test_json_holds_every_field_raw_and_parses_back() -> None:
    """JSON output keeps the stored strings as they are (escaped by the encoder), with the attempt log."""
    doc = json.loads(JsonReporter().delivery(DeliveryDetail(FAILED, b"{}", ATTEMPTS), [DEAD_CB]))
    assert doc["webhook"] == "w-" + HOSTILE and doc["next_attempt_at"] == T + 60
    assert [c["id"] for c in doc["callbacks"]] == [6] and doc["callbacks"][0]["outcome"] == "dead"
    assert doc["attempt_log"][2]["response_excerpt"] == "z" * 201  # JSON is not cut
    assert doc["attempt_log"][0]["response_headers"]["X-" + HOSTILE] == HOSTILE
    shown = json.loads(JsonReporter().callback(CallbackDetail(DEAD_CB, b'{"k": 1}\xff', ())))
    assert shown["payload"] == '{"k": 1}\ufffd' and shown["attempt_log"] == [] and "url" not in shown


def test_json_list_keys_are_stable() -> None:
    """The keys scripts read from ``--format json`` lists, in order."""
    (row,) = json.loads(JsonReporter().delivery_list([DEAD]))
    assert list(row) == [
        "id", "event_uuid", "event_type", "webhook", "status", "attempts", "created_at", "updated_at",
        "next_attempt_at", "last_status_code", "last_error", "dead_reason",
    ]  # fmt: skip
    (cb,) = json.loads(JsonReporter().callback_list([PENDING_CB]))
    assert list(cb)[:4] == ["id", "webhook", "delivery_id", "outcome"]


class FakeStore:
    """Just what the list and show commands read."""

    def __enter__(self) -> FakeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def list_deliveries(self, query: DeliveryQuery) -> list[Delivery]:
        return [FAILED, DEAD]

    def get_delivery(self, delivery_id: int) -> DeliveryDetail | None:
        return DeliveryDetail(FAILED, b"{}", ATTEMPTS) if delivery_id == FAILED.id else None

    def list_callbacks(self, query: DeliveryQuery) -> list[Callback]:
        return [DEAD_CB, PENDING_CB]

    def get_callback(self, callback_id: int) -> CallbackDetail | None:
        return CallbackDetail(DEAD_CB, b"{}", ATTEMPTS) if callback_id == DEAD_CB.id else None


@pytest.mark.parametrize("fmt", sorted(REPORTERS))
def test_the_commands_print_exactly_what_the_reporter_renders(monkeypatch: Any, fmt: str) -> None:
    """``deliveries``/``callbacks`` ``list`` and ``show`` echo their reporter's output byte for byte."""
    monkeypatch.setattr(cli, "_open_store", lambda state_dir: FakeStore())
    reporter, store = REPORTERS[fmt](), FakeStore()
    expected = {
        ("deliveries", "list"): reporter.delivery_list(store.list_deliveries(DeliveryQuery())),
        ("deliveries", "show", "22"): reporter.delivery(
            DeliveryDetail(FAILED, b"{}", ATTEMPTS), [DEAD_CB, PENDING_CB]
        ),
        ("callbacks", "list"): reporter.callback_list([DEAD_CB, PENDING_CB]),
        ("callbacks", "show", "6"): reporter.callback(CallbackDetail(DEAD_CB, b"{}", ATTEMPTS)),
    }
    for args, output in expected.items():
        result = CliRunner().invoke(cli.main, [*args, "--state", str(Path("unused")), "--format", fmt])
        assert (result.exit_code, result.output) == (0, output), args
