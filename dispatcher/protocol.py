"""The event protocol (SPEC section 4): NDJSON envelopes in, one acknowledgement line out per input line.

Pure functions only: parsing a line, building the body that is POSTed, formatting acknowledgements.

Parsing is strict, so whatever a line holds its failure is that line's rejection and nothing downstream
(the store, the body, the HTTP headers) meets a value it cannot handle: UTF-8 only (no raw surrogates, no
invalid bytes), no lone surrogate escapes, no ``NaN``/``Infinity``/``-Infinity`` and no number that overflows
to infinity (bodies stay JSON), at most ``MAX_DEPTH`` nested arrays/objects (checked before the recursive
parser runs), and an ``event.type`` of visible ASCII (it is sent as the ``X-Whisperer-Event`` header). The
checks cost almost nothing on ordinary lines: the surrogate check runs only when a line holds a surrogate
escape, the precise depth scan only when the line holds more brackets than the limit.
"""

from __future__ import annotations

import json
import math
import re
import uuid as uuidlib
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_LINE_BYTES = 1 << 20
#: Arrays and objects nested deeper than this are refused (the envelope itself is level 1).
MAX_DEPTH = 64

_HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")
_DASHED = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
#: Visible ASCII: what an HTTP header value carries unchanged (no spaces, controls or other encodings).
_EVENT_TYPE = re.compile(r"[\x21-\x7e]{1,255}")
_WEBHOOK_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE_PAIR = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}")
#: For the depth scan: keep quotes and brackets only, and count objects as arrays.
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')
_ONE_KIND = bytes.maketrans(b"{}", b"[]")
#: Where a float literal may overflow to infinity: a three-digit exponent ending a number, or 309 digits
#: in a row (a false alarm only costs a call per float of that line).
_LONG_EXPONENTS = tuple(re.compile(e + rb"[+-]?[0-9]{3,}+(?=[,\]}\s])") for e in (b"e", b"E"))
_OVERFLOW_DIGITS = 309
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
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
        text = raw.decode("utf-8")  # strict: json.loads(bytes) would let raw surrogates through
    except UnicodeDecodeError as exc:
        return BadLine(line_no, f"not valid JSON: not UTF-8 ({exc.reason} at byte {exc.start})")
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and (problem := _nesting_problem(raw)):
        return BadLine(line_no, problem)
    try:
        # Checking floats costs a call each: only where a literal could overflow to infinity.
        obj = (_CHECKING_DECODER if _may_overflow(raw) else _DECODER).decode(text)
    except _NotFinite as exc:
        return BadLine(line_no, f"not valid JSON: {exc} is not a finite number")
    except _DuplicateKey as exc:
        return BadLine(line_no, f"duplicate key {json.dumps(str(exc))} in an object")
    except ValueError as exc:
        return BadLine(line_no, f"not valid JSON: {_short(exc)}")
    if "\\u" in text and _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(text, obj):
        return BadLine(line_no, "not valid JSON text: a lone surrogate escape (\\ud800-\\udfff)")
    if not isinstance(obj, dict):
        return BadLine(line_no, f"expected a JSON object, got {_json_kind(obj)}")
    event = obj.get("event")
    if not isinstance(event, dict):
        return BadLine(line_no, "missing 'event' object")
    event_type = event.get("type")
    if not isinstance(event_type, str) or not event_type.strip():
        return BadLine(line_no, "missing 'event.type' (a non-empty string)")
    if not _EVENT_TYPE.fullmatch(event_type):
        return BadLine(
            line_no, "'event.type' must be at most 255 visible ASCII characters, without whitespace"
        )
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
    if webhook is not None and not (isinstance(webhook, str) and _WEBHOOK_NAME.fullmatch(webhook)):
        return BadLine(line_no, "'webhook' must be a webhook name (a lowercase DNS label)")
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


def connection_refused(error: str) -> bytes:
    """The one line a connection refused before any of its lines was read gets (no ``line``: none was)."""
    return (json.dumps({"ok": False, "error": error}) + "\n").encode()


class _NotFinite(ValueError):
    """A number the parser would turn into NaN or an infinity."""


def _refuse_constant(name: str) -> Any:
    raise _NotFinite(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # e.g. 1e999: valid JSON, but Python reads it as inf and writes it as Infinity
        raise _NotFinite(text if len(text) <= 40 else f"{text[:40]}...")
    return value


class _DuplicateKey(ValueError):
    """An object that names one key twice."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's members, refusing a key named twice: JSON parsers disagree on which one wins (Python's
    keeps the last, others the first or fail), so the dispatcher routing on one reading of a line while a
    receiver acts on another is refused at the door (about 0.3 us per object, measured)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key if len(key) <= 40 else f"{key[:40]}...")
            seen.add(key)
    return obj


def _may_overflow(raw: bytes) -> bool:
    """Whether a float literal in ``raw`` could be too large for a float (cheap; false alarms possible)."""
    if any(pattern.search(raw) for pattern in _LONG_EXPONENTS):
        return True
    return len(raw) >= _OVERFLOW_DIGITS and b"0" * _OVERFLOW_DIGITS in raw.translate(_DIGITS_AS_ZERO)


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
_CHECKING_DECODER = json.JSONDecoder(
    parse_constant=_refuse_constant, parse_float=_finite_float, object_pairs_hook=_unique_keys
)


def _nesting_problem(raw: bytes) -> str | None:
    """Why the arrays/objects of ``raw`` cannot be parsed safely: nested deeper than ``MAX_DEPTH``, or
    brackets that do not balance (never valid JSON); None when neither. Brackets inside strings do not count.

    Exact for valid JSON, so it never turns one away that is at most ``MAX_DEPTH`` deep, and it never lets
    the parser recurse deeper than that. Only bytes methods, no per-character Python: UTF-8 multi-byte
    sequences never contain these ASCII bytes."""
    # Escaped backslashes, then escaped quotes, go first (left to right, as the parser pairs them); what is
    # left of a string is then its quotes and the brackets inside it.
    if b"\\" in raw:
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    skeleton = raw.translate(_ONE_KIND, _NOT_STRUCTURE)
    # Two adjacent quotes close one string and open the next, or enclose nothing: removing them keeps
    # everything outside strings as it was.
    skeleton = skeleton.replace(b'""', b"")
    if b'"' in skeleton:  # strings holding brackets (an unterminated one runs to the end)
        skeleton = b"".join(skeleton.split(b'"')[::2])
    # Each round removes the innermost pairs, so balanced brackets are gone after as many rounds as they
    # are deep; a round that removes nothing leaves brackets that do not balance.
    for _ in range(MAX_DEPTH):
        if not skeleton:
            return None
        fewer = skeleton.replace(b"[]", b"")
        if fewer == skeleton:
            return "not valid JSON: unbalanced brackets"
        skeleton = fewer
    return None if not skeleton else f"nested deeper than {MAX_DEPTH} arrays/objects"


def _has_lone_surrogate(text: str, obj: Any) -> bool:
    """Whether any key or string holds a surrogate code point (a valid escaped pair decodes to one character).

    Without escaped backslashes every ``\\u`` in ``text`` is an escape, and the pairs the parser joins are
    exactly those the regular expression removes; otherwise the parsed ``obj`` is encoded to find out (it is
    at most ``MAX_DEPTH`` deep, so the C encoder's recursion is bounded)."""
    if "\\\\" not in text:
        return _SURROGATE_ESCAPE.search(_SURROGATE_PAIR.sub("", text)) is not None
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


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
