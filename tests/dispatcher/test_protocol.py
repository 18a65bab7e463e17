"""The event protocol: parsing NDJSON lines and formatting acknowledgements (SPEC section 4)."""

from __future__ import annotations

import json

import pytest

from dispatcher.protocol import (
    MAX_DEPTH,
    BadLine,
    ParsedEvent,
    ack_accepted,
    ack_duplicate,
    ack_rejected,
    normalise_uuid,
    parse_line,
)
from tests.hostile.corpus import PARSE_CORPUS


def test_valid_envelope_keeps_uuid_type_and_payload() -> None:
    """A valid envelope yields its type, normalised uuid and a body holding the same event and payload."""
    line = (
        b'{"event": {"type": "package.created", "uuid": "C9591F0D1C1D4DA58ADE880921BD7E93"}, '
        b'"payload": {"id": 73}}'
    )
    parsed = parse_line(line, 1)
    assert isinstance(parsed, ParsedEvent)
    assert parsed.type == "package.created"
    assert parsed.uuid == "c9591f0d1c1d4da58ade880921bd7e93"
    body = json.loads(parsed.body)
    assert body == {
        "event": {"type": "package.created", "uuid": "C9591F0D1C1D4DA58ADE880921BD7E93"},
        "payload": {"id": 73},
    }


def test_envelope_with_uuid_and_no_routing_keys_is_delivered_byte_for_byte() -> None:
    """The producer's own bytes are the body when nothing has to change (only a CRLF ending is dropped)."""
    line = (
        b'{"payload": {"b": 1, "a": "\\u00e9"},  "event": {"uuid": "ab' + b"cd" * 15 + b'", "type": "x.y"}}'
    )
    parsed = parse_line(line + b"\r", 1)
    assert isinstance(parsed, ParsedEvent)
    assert parsed.body == line


def test_missing_uuid_is_generated_and_written_into_the_body() -> None:
    """An event without a uuid gets a fresh 32-hex one, and the delivered body carries it."""
    first = parse_line(b'{"event": {"type": "a.b"}, "payload": {}}', 1)
    second = parse_line(b'{"event": {"type": "a.b"}, "payload": {}}', 2)
    assert isinstance(first, ParsedEvent) and isinstance(second, ParsedEvent)
    assert first.uuid != second.uuid
    assert normalise_uuid(first.uuid) == first.uuid
    assert json.loads(first.body)["event"]["uuid"] == first.uuid


def test_dashed_uuid_is_accepted_and_normalised() -> None:
    """A dashed UUID is accepted; its identity is the 32-hex form."""
    parsed = parse_line(b'{"event": {"type": "a", "uuid": "c9591f0d-1c1d-4da5-8ade-880921bd7e93"}}', 1)
    assert isinstance(parsed, ParsedEvent)
    assert parsed.uuid == "c9591f0d1c1d4da58ade880921bd7e93"


def test_routing_keys_are_read_but_not_delivered() -> None:
    """``filter`` and ``webhook`` steer routing and are removed from the delivered body."""
    parsed = parse_line(
        b'{"event": {"type": "a"}, "payload": 1, "filter": {"channel_id": 3}, "webhook": "erp"}', 1
    )
    assert isinstance(parsed, ParsedEvent)
    assert parsed.filter == {"channel_id": 3}
    assert parsed.webhook == "erp"
    assert set(json.loads(parsed.body)) == {"event", "payload"}


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        (b"not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "expected a JSON object, got an array"),
        (b'"text"', "expected a JSON object, got a string"),
        (b'{"payload": {}}', "missing 'event' object"),
        (b'{"event": {"uuid": "c9591f0d1c1d4da58ade880921bd7e93"}}', "missing 'event.type'"),
        (b'{"event": {"type": ""}}', "missing 'event.type'"),
        (b'{"event": {"type": "a b"}}', "without whitespace"),
        (b'{"event": {"type": "a", "uuid": "nope"}}', "'event.uuid' must be"),
        (b'{"event": {"type": "a"}, "filter": [1]}', "'filter' must be a JSON object"),
        (b'{"event": {"type": "a"}, "webhook": 7}', "'webhook' must be a webhook name"),
    ],
)
def test_bad_lines_are_rejected_with_their_line_number_and_reason(line: bytes, fragment: str) -> None:
    """Each kind of bad line is rejected with its line number and a reason naming the problem."""
    parsed = parse_line(line, 17)
    assert isinstance(parsed, BadLine)
    assert parsed.line == 17
    assert fragment in parsed.error


def test_acknowledgements_are_single_json_lines() -> None:
    """Acks are one JSON object per line, in the shapes SPEC section 4 gives."""
    assert json.loads(ack_accepted("ab" * 16, 2)) == {"ok": True, "uuid": "ab" * 16, "deliveries": 2}
    assert json.loads(ack_duplicate("ab" * 16)) == {"ok": True, "uuid": "ab" * 16, "duplicate": True}
    rejected = ack_rejected(17, 'bad "thing"\nhere')
    assert rejected.endswith(b"\n") and rejected.count(b"\n") == 1
    assert json.loads(rejected) == {"ok": False, "line": 17, "error": 'bad "thing"\nhere'}


@pytest.mark.parametrize(("name", "line", "fragment"), PARSE_CORPUS, ids=[c[0] for c in PARSE_CORPUS])
def test_hostile_lines_are_rejected_without_raising(name: str, line: bytes, fragment: str) -> None:
    """Nesting, non-finite numbers, surrogates, bad UTF-8 and unsendable types are that line's rejection."""
    parsed = parse_line(line, 9)
    assert isinstance(parsed, BadLine), name
    assert parsed.line == 9
    assert fragment in parsed.error
    assert len(parsed.error) < 300  # never the line's content


def test_nesting_up_to_the_limit_is_accepted() -> None:
    """An envelope nested exactly MAX_DEPTH deep (the envelope counts as one) is an ordinary event."""
    inner = MAX_DEPTH - 1
    parsed = parse_line(b'{"event":{"type":"a"},"payload":' + b"[" * inner + b"]" * inner + b"}", 1)
    assert isinstance(parsed, ParsedEvent)


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    """Thousands of brackets inside a string (escaped quotes included) are text, not nesting."""
    text = b'"\\"' + b"[{" * 5000 + b'"'
    parsed = parse_line(b'{"event":{"type":"a"},"payload":' + text + b"}", 1)
    assert isinstance(parsed, ParsedEvent)
    assert json.loads(parsed.body)["payload"].endswith("[{")


def test_many_sibling_objects_are_not_deep() -> None:
    """A wide array of objects has more brackets than the limit but is only two levels deep."""
    parsed = parse_line(b'{"event":{"type":"a"},"payload":[' + b",".join([b"{}"] * 1000) + b"]}", 1)
    assert isinstance(parsed, ParsedEvent)


def test_escaped_surrogate_pairs_and_escaped_backslashes_are_accepted() -> None:
    """A valid surrogate pair is one character, and ``\\\\ud800`` is a backslash followed by text."""
    parsed = parse_line(b'{"event":{"type":"a"},"payload":["\\ud83d\\ude00","\\\\ud800"]}', 1)
    assert isinstance(parsed, ParsedEvent)
    assert json.loads(parsed.body)["payload"] == ["\U0001f600", "\\ud800"]


def test_finite_floats_and_nul_in_payload_are_delivered_as_json() -> None:
    """Large but finite numbers and an escaped NUL inside the payload stay valid JSON in the body."""
    parsed = parse_line(b'{"event":{"type":"a"},"payload":[1e308,-2.5e-300,"\\u0000"]}', 1)
    assert isinstance(parsed, ParsedEvent)
    assert json.loads(parsed.body)["payload"] == [1e308, -2.5e-300, "\x00"]


@pytest.mark.parametrize(
    "payload",
    [b'"\\\\"', b'"\\\\\\"[[["', b'["\\"]", "{"]', b'{"k\\"{[": "]}"}'],
    ids=["escaped-backslash", "escaped-quote-after-backslash", "quoted-brackets", "brackets-in-key"],
)
def test_escapes_and_quoted_brackets_do_not_confuse_the_depth_scan(payload: bytes) -> None:
    """Escaped backslashes and quotes end (or do not end) strings as the parser says."""
    padding = (
        b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    )  # over the bracket count, one level too deep with the envelope
    line = b'{"event":{"type":"a"},"payload":[' + payload + b"]," + b'"x":' + padding + b"}"
    deep = parse_line(line, 1)
    assert isinstance(deep, BadLine) and "nested deeper than" in deep.error
    shallow = b'{"event":{"type":"a"},"payload":[' + payload + b',"' + b"[" * 100 + b'"]}'
    assert isinstance(parse_line(shallow, 1), ParsedEvent)


def test_distinct_keys_that_merely_look_alike_are_accepted() -> None:
    """Only a key named twice in one object is refused: the same key in sibling or nested objects, and keys
    differing only in case, are ordinary JSON."""
    line = b'{"event":{"type":"a.b","data":{"id":1,"ID":2,"inner":{"id":3}},"list":[{"id":4},{"id":5}]}}'
    parsed = parse_line(line, 1)
    assert isinstance(parsed, ParsedEvent)
    assert json.loads(parsed.body)["event"]["data"] == {"id": 1, "ID": 2, "inner": {"id": 3}}


def test_a_duplicate_key_is_named_escaped_and_shortened() -> None:
    """The refusal names the key as a JSON string (control characters escaped, at most 40 characters)."""
    key = "\u001b[31m" + "k" * 100
    text = json.dumps(key)
    line = ('{"event":{"type":"a.b","data":{' + text + ":1," + text + ":2}}}").encode()
    parsed = parse_line(line, 3)
    assert isinstance(parsed, BadLine) and parsed.line == 3
    assert "\u001b" not in parsed.error and "\\u001b" in parsed.error
    assert parsed.error.startswith("duplicate key ") and parsed.error.endswith('..." in an object')
    assert len(parsed.error) < 80
