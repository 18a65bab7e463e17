"""Splitting a byte stream into NDJSON lines with a maximum line length."""

from __future__ import annotations

from dispatcher.ingest import LineReader


def test_lines_split_across_reads_are_joined() -> None:
    """A line that arrives in several reads comes out whole, numbered from 1."""
    reader = LineReader(100)
    assert reader.feed(b'{"a"') == []
    assert reader.feed(b':1}\n{"b":2}\n{"c"') == [(1, b'{"a":1}'), (2, b'{"b":2}')]
    assert reader.feed(b":3}\n") == [(3, b'{"c":3}')]


def test_overlong_line_is_reported_without_buffering_it() -> None:
    """A line over the limit yields None in its place, and the lines around it are untouched."""
    reader = LineReader(10)
    out = reader.feed(b"short\n" + b"x" * 25)
    assert out == [(1, b"short")]
    out = reader.feed(b"y" * 1000)
    assert out == []
    assert len(reader._buffer) == 0  # nothing of the long line is kept
    assert reader.feed(b"z\nok\n") == [(2, None), (3, b"ok")]


def test_line_exactly_at_the_limit_is_accepted() -> None:
    """A line of exactly the maximum length is a normal line."""
    reader = LineReader(5)
    assert reader.feed(b"12345\n123456\n") == [(1, b"12345"), (2, None)]


def test_last_line_without_newline_counts_at_eof() -> None:
    """At EOF a final line without a newline is still handed out; blank trailing data is not."""
    reader = LineReader(100)
    reader.feed(b"one\ntwo")
    assert reader.finish() == [(2, b"two")]
    other = LineReader(100)
    other.feed(b"one\n  ")
    assert other.finish() == []
