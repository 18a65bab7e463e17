"""Text for a terminal: bytes that other parties chose, made visible instead of interpreted.

A receiver's response excerpt, header values and error text (and an event type chosen by the OMS) end up in
``dispatch deliveries``/``dispatch callbacks`` text output. Printed raw, ``\\x1b]0;...\\x07`` retitles the
operator's terminal, ``\\x1b[2J`` clears it and ``\\r`` overwrites what the line said. ``visible`` is the one
function every text renderer passes such strings through; JSON output is escaped by the encoder already.
"""

from __future__ import annotations

_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def visible(text: str) -> str:
    """``text`` with control characters, terminal escapes and invisible format characters (bidi overrides,
    zero-width) shown as ``\\x1b``, ``\\r``, ``\\u202e``, ...; backslashes doubled so the result is
    unambiguous. Printable text, non-ASCII letters included, is unchanged."""
    if text.isprintable() and "\\" not in text:
        return text  # the common case: nothing to do
    return "".join(c if c.isprintable() and c != "\\" else _escape(c) for c in text)
