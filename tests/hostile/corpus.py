"""Hostile input lines: each must be rejected as that line's own failure, with nothing else affected.

Shared by the parser's unit tests and the real-process fault suite. Each entry is (name, line without its
newline, a fragment of the rejection's error).
"""

from __future__ import annotations

from dispatcher.protocol import DEFAULT_MAX_LINE_BYTES, MAX_DEPTH

UUID = "c9591f0d1c1d4da58ade880921bd7e93"


def _envelope(payload: bytes, event: bytes = b'"type":"package.created"') -> bytes:
    return b'{"event":{' + event + b'},"payload":' + payload + b"}"


#: Lines that parse_line itself must reject (name, line, fragment of the error).
PARSE_CORPUS: list[tuple[str, bytes, str]] = [
    ("deep-array", _envelope(b"[" * 100_000 + b"]" * 100_000), "nested deeper than"),
    ("deep-object", _envelope(b'{"a":' * 50_000 + b"1" + b"}" * 50_000), "nested deeper than"),
    ("deep-unclosed", b"[" * 200_000, "unbalanced brackets"),
    ("unbalanced-flood", b"[" + b"[]" * 300_000, "unbalanced brackets"),
    ("one-too-deep", _envelope(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH), "nested deeper than"),
    # Two readings of one line: the dispatcher would route on the last, a receiver may act on the first.
    (
        "duplicate-event",
        b'{"event":{"type":"a.b"},"event":{"type":"package.created"}}',
        'duplicate key "event"',
    ),
    ("duplicate-type", _envelope(b"{}", b'"type":"a.b","type":"package.created"'), 'duplicate key "type"'),
    (
        "duplicate-uuid",
        _envelope(b"{}", b'"type":"a","uuid":"' + UUID.encode() + b'","uuid":"' + UUID[::-1].encode() + b'"'),
        'duplicate key "uuid"',
    ),
    ("duplicate-in-payload", _envelope(b'{"amount":1,"amount":1000}'), 'duplicate key "amount"'),
    ("duplicate-escaped", _envelope(b'{"a":1,"\\u0061":2}'), 'duplicate key "a"'),
    ("nan", _envelope(b"NaN"), "NaN is not a finite number"),
    ("infinity", _envelope(b'{"x":Infinity}'), "Infinity is not a finite number"),
    ("minus-infinity", _envelope(b"[-Infinity]"), "-Infinity is not a finite number"),
    ("1e999", _envelope(b"1e999"), "1e999 is not a finite number"),
    ("long-float", _envelope(b"1" + b"0" * 400 + b".5"), "is not a finite number"),
    ("surrogate-in-value", _envelope(b'"\\ud800"'), "lone surrogate"),
    ("low-surrogate-in-value", _envelope(b'"x\\uDC00y"'), "lone surrogate"),
    ("surrogate-in-key", _envelope(b'{"\\ud800":1}'), "lone surrogate"),
    ("surrogate-in-type", _envelope(b"{}", b'"type":"package.created\\ud800"'), "lone surrogate"),
    (
        "surrogate-in-type-with-uuid",
        _envelope(b"{}", b'"type":"a\\udbff","uuid":"' + UUID.encode() + b'"'),
        "lone surrogate",
    ),
    ("surrogate-in-uuid", _envelope(b"{}", b'"type":"a","uuid":"\\ud800"'), "lone surrogate"),
    ("surrogate-in-filter", b'{"event":{"type":"a"},"filter":{"k":"\\ud800"}}', "lone surrogate"),
    ("surrogate-in-webhook", b'{"event":{"type":"a"},"webhook":"\\ud800"}', "lone surrogate"),
    ("raw-surrogate-bytes", _envelope(b'"\xed\xa0\x80"'), "not UTF-8"),
    (
        "raw-surrogate-in-type",
        _envelope(b"{}", b'"type":"a\xed\xb0\x80","uuid":"' + UUID.encode() + b'"'),
        "not UTF-8",
    ),
    ("invalid-utf8", _envelope(b'"\xff\xfe"'), "not UTF-8"),
    ("overlong-utf8", _envelope(b'"\xc0\xaf"'), "not UTF-8"),
    ("nul-in-type", _envelope(b"{}", b'"type":"a\\u0000b"'), "visible ASCII"),
    ("raw-nul", _envelope(b'"a\x00b"'), "not valid JSON"),
    ("non-ascii-type", _envelope(b"{}", '"type":"paket.erstellt\u00e9"'.encode()), "visible ASCII"),
    ("newline-in-type", _envelope(b"{}", b'"type":"a\\r\\nX-Evil: 1"'), "visible ASCII"),
    ("huge-integer", _envelope(b"9" * 5000), "not valid JSON"),
    ("long-webhook-name", b'{"event":{"type":"a"},"webhook":"' + b"x" * 100_000 + b'"}', "webhook name"),
]

#: A line over the default limit (1 MiB + 1 byte); rejected by the line reader, not the parser.
TOO_LONG = _envelope(b'"' + b"x" * (DEFAULT_MAX_LINE_BYTES + 1) + b'"')
