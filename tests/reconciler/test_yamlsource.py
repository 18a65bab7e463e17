"""Reading YAML into plain data with the position of every key and value."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from reconciler.model import Diagnostic
from reconciler.yamlsource import Document, decode_source, format_json_path, iter_paths, parse_source


def one(text: str) -> Document:
    parsed = parse_source(text, "f.yaml")
    assert parsed.diagnostics == ()
    (document,) = parsed.documents
    return document


def test_positions_of_keys_and_values_are_one_based() -> None:
    """Every key and value can be located by its JSON path, lines and columns counted from 1."""
    doc = one("spec:\n  target_url: https://a.example.com\n  event_type: [a.b, c.d]\n")
    assert doc.key_position(("spec", "target_url")) == (2, 3)
    assert doc.value_position(("spec", "target_url")) == (2, 15)
    assert doc.value_position(("spec", "event_type", 1)) == (3, 21)
    assert doc.value_position(("spec",)) == (2, 3)  # a block mapping starts at its first key
    assert (doc.line, doc.column) == (1, 1)


def test_position_of_a_missing_path_is_its_closest_existing_parent() -> None:
    """A path that is not in the document resolves to the nearest parent that is (where a key is missing)."""
    doc = one("spec:\n  config: {timeout: 3}\n")
    assert doc.value_position(("spec", "config", "auth", "password")) == (2, 11)


def test_mapping_keys_are_always_text_from_the_source() -> None:
    """`on`, `yes`, numbers and null as keys stay the text that was written."""
    doc = one("on: [dead]\nyes: 1\n200: ok\n~: x\n")
    assert doc.data == {"on": ["dead"], "yes": 1, "200": "ok", "~": "x"}


def test_scalars_follow_the_yaml_1_2_core_schema() -> None:
    """Only true/false are booleans; yes/no/on/off, dates and versions stay strings; numbers are numbers."""
    doc = one(
        "a: yes\nb: off\nc: true\nd: 2024-01-02\ne: 1.2.3\nf: 010\ng: 0x1F\nh: 1.5e3\ni: ~\nj:\n"
        "k: '3'\nl: !!str 3\nm: !!int '7'\nn: -.5\n"
    )
    assert doc.data == {
        "a": "yes",
        "b": "off",
        "c": True,
        "d": "2024-01-02",
        "e": "1.2.3",
        "f": 10,
        "g": 31,
        "h": 1500.0,
        "i": None,
        "j": None,
        "k": "3",
        "l": "3",
        "m": 7,
        "n": -0.5,
    }


def test_duplicate_key_is_reported_at_the_second_occurrence() -> None:
    """A key given twice is a `duplicate-key` error at the second key, naming the first one's line."""
    doc = parse_source("a: 1\nb:\n  c: 1\n  c: 2\n", "f.yaml").documents[0]
    (d,) = doc.diagnostics
    assert (d.rule, d.line, d.column, d.json_path) == ("duplicate-key", 4, 3, "$.b.c")
    assert "line 3" in d.message


@pytest.mark.parametrize(
    ("text", "line", "column", "fragment"),
    [
        ("a: [1, 2\nb: 3\n", 2, 2, "expected ','"),
        ("a:\n  b: 1\n c: 2\n", 3, 2, "expected key"),
        ("a: b: c\n", 1, 5, "mapping values are not allowed"),
        ("a:\n\tb: 1\n", 2, 1, "tab"),
        ("a: *nothing\n", 1, 4, "undefined alias"),
    ],
)
def test_syntax_errors_become_a_positioned_diagnostic(
    text: str, line: int, column: int, fragment: str
) -> None:
    """Malformed YAML is a `yaml-syntax` error at the parser's line and column, with the parser's problem."""
    parsed = parse_source(text, "f.yaml")
    (d,) = parsed.diagnostics
    assert (d.rule, d.file, d.line, d.column) == ("yaml-syntax", "f.yaml", line, column)
    assert fragment in d.message


def test_documents_before_a_syntax_error_are_kept() -> None:
    """A syntax error in a later document does not lose the documents before it."""
    parsed = parse_source("a: 1\n---\nb: [\n", "f.yaml")
    assert [d.data for d in parsed.documents] == [{"a": 1}]
    assert [d.rule for d in parsed.diagnostics] == ["yaml-syntax"]


def test_multi_document_files_keep_index_and_start_line() -> None:
    """Each `---` document has its index, data and the line where its content starts."""
    parsed = parse_source("# head\na: 1\n---\n# second\nb: 2\n---\nc: 3\n", "f.yaml")
    assert [(d.index, d.line, d.data) for d in parsed.documents] == [
        (0, 2, {"a": 1}),
        (1, 5, {"b": 2}),
        (2, 7, {"c": 3}),
    ]


def test_empty_file_has_no_documents_and_empty_document_is_null() -> None:
    """A file of comments holds no document; an explicit empty document is null."""
    assert parse_source("# nothing\n", "f.yaml").documents == ()
    assert [d.data for d in parse_source("---\n", "f.yaml").documents] == [None]


def test_aliases_and_merge_keys_are_resolved() -> None:
    """An alias reuses its anchor's data and `<<` merges a mapping, with keys written in place winning."""
    doc = one("base: &b {x: 1, y: 2}\nuse:\n  <<: *b\n  y: 3\nagain: *b\n")
    assert doc.data == {"base": {"x": 1, "y": 2}, "use": {"x": 1, "y": 3}, "again": {"x": 1, "y": 2}}
    assert doc.key_position(("use", "y")) == (4, 3)
    assert doc.key_position(("use", "x")) == (1, 11)  # merged keys point where they are written


def test_recursive_alias_is_an_error_not_a_crash() -> None:
    """A node that contains itself is reported instead of looping forever."""
    doc = parse_source("a: &x [*x]\n", "f.yaml").documents[0]
    assert [d.rule for d in doc.diagnostics] == ["yaml-syntax"]


def test_unknown_tags_are_reported() -> None:
    """Application tags such as `!python/object` are `yaml-tag` errors; the value is kept as text."""
    doc = parse_source("a: !!python/name:os.system x\nb: !custom y\n", "f.yaml").documents[0]
    assert [(d.rule, d.line) for d in doc.diagnostics] == [("yaml-tag", 1), ("yaml-tag", 2)]
    assert doc.data == {"a": "x", "b": "y"}


def test_non_finite_numbers_are_reported() -> None:
    """`.inf` and `.nan` are `invalid-number` errors: JSON has neither, and NaN passes every bound."""
    doc = parse_source("a: .inf\nb: [1, .nan]\n", "f.yaml").documents[0]
    assert [(d.rule, d.json_path) for d in doc.diagnostics] == [
        ("invalid-number", "$.a"),
        ("invalid-number", "$.b[1]"),
    ]
    assert math.isinf(doc.data["a"])


def test_control_characters_are_syntax_errors_with_their_position() -> None:
    """A control character in the text is a `yaml-syntax` error at its line and column (in characters)."""
    (d,) = parse_source("é: ok\nb: \x01\n", "f.yaml").diagnostics
    assert (d.rule, d.line, d.column) == ("yaml-syntax", 2, 4)
    assert "#x0001" in d.message


def test_decode_reports_invalid_utf8_and_drops_a_bom() -> None:
    """Bytes decode as UTF-8 with an optional BOM; invalid bytes give an `encoding` diagnostic."""
    assert decode_source("\ufeffa: 1\n".encode(), "f.yaml") == "a: 1\n"
    problem = decode_source(b"a: 1\nb: \xff\n", "f.yaml")
    assert isinstance(problem, Diagnostic)
    assert (problem.rule, problem.line, problem.column) == ("encoding", 2, 4)


def test_json_paths_use_dots_for_plain_keys_and_brackets_otherwise() -> None:
    """Paths read like `$.spec.event_type[0]`, with unusual keys quoted in brackets."""
    assert format_json_path(()) == "$"
    assert format_json_path(("spec", "event_type", 0)) == "$.spec.event_type[0]"
    assert format_json_path(("spec", "additional_headers", "X Y")) == "$.spec.additional_headers['X Y']"


def test_iter_paths_visits_every_value() -> None:
    """Every value of nested data is visited with its path, the root first."""
    assert list(iter_paths({"a": [1, {"b": 2}]})) == [
        ((), {"a": [1, {"b": 2}]}),
        (("a",), [1, {"b": 2}]),
        (("a", 0), 1),
        (("a", 1), {"b": 2}),
        (("a", 1, "b"), 2),
    ]


def test_pure_python_parser_gives_the_same_results() -> None:
    """Without libyaml, the pure-Python parser yields the same data, diagnostics and positions."""
    code = (
        "import yaml\n"
        "del yaml.CSafeLoader\n"
        "from reconciler import yamlsource as y\n"
        "assert y._BaseLoader is yaml.SafeLoader\n"
        "bad = y.parse_source('é: ok\\nb: \\x01\\n', 'f').diagnostics\n"
        "doc = y.parse_source('on: [dead]\\nx: yes\\nspec:\\n  a: 1\\n  a: 2\\n', 'f').documents[0]\n"
        "print([(d.rule, d.line, d.column) for d in bad + doc.diagnostics])\n"
        "print(doc.data, doc.value_position(('on', 0)))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.splitlines() == [
        "[('yaml-syntax', 2, 4), ('duplicate-key', 5, 3)]",
        "{'on': ['dead'], 'x': 'yes', 'spec': {'a': 2}} (1, 6)",
    ]
