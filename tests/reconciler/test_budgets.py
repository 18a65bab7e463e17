"""Small files, huge work: every per-file budget is a located diagnostic, never an exception or a runaway."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.filecheck import build_file, read_and_check
from reconciler.limits import MIB, Limits
from reconciler.loader import load_tree
from reconciler.model import Diagnostic
from reconciler.yamlsource import parse_source

RECONCILE = str(Path(sys.executable).parent / "reconcile")  # the installed console script
HEADER = "apiVersion: webhooks/v1\nkind: Webhook\nmetadata:\n  name: bomb\n"
SPEC = "spec:\n  target_url: https://erp.example.com/hooks\n  event_type: package.created\n"


def alias_bomb(levels: int = 9, width: int = 10) -> str:
    """A webhook whose labels hold the classic 'billion laughs': under 1 KB, width**levels nodes."""
    lines = ["  labels:", "    l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"    l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return HEADER + "\n".join(lines) + "\n" + SPEC


def places(diagnostics: tuple[Diagnostic, ...]) -> list[tuple[str, int, int]]:
    return [(d.rule, d.line, d.column) for d in diagnostics]


def test_an_alias_bomb_is_one_located_diagnostic() -> None:
    """A sub-kilobyte alias bomb stops at the alias past the node budget, located where that alias is."""
    text = alias_bomb()
    assert len(text.encode()) < 1024
    parsed = parse_source(text, "bomb.yaml")
    assert parsed.documents == ()
    assert places(parsed.diagnostics) == [("yaml-alias-budget", 10, 9)]  # the list of `l4: &l4 [*l3, ...]`
    assert "the anchor at line 9" in parsed.diagnostics[0].message
    assert parsed.diagnostics[0].json_path == "$.metadata.labels.l4[7]"


def test_the_alias_node_budget_counts_expanded_nodes() -> None:
    """Each alias costs the nodes it brings in: past max_alias_nodes the alias at fault is reported."""
    text = "a: &a [1, 2, 3, 4]\nb: *a\nc: *a\nd: *a\n"
    assert parse_source(text, "f.yaml", Limits(max_alias_nodes=12)).diagnostics == ()
    parsed = parse_source(text, "f.yaml", Limits(max_alias_nodes=11))
    assert places(parsed.diagnostics) == [("yaml-alias-budget", 4, 1)]  # the key `d:`
    assert parsed.diagnostics[0].json_path == "$.d"


def test_the_alias_count_budget_is_per_file_across_documents() -> None:
    """The number of aliases followed is counted over every document of a file, not per document."""
    text = "a: &a x\nb: &m {k: v}\nc: *m\n---\nd: &n {k: v}\ne: *n\nf: *n\n"
    parsed = parse_source(text, "f.yaml", Limits(max_aliases=2))
    assert len(parsed.documents) == 1  # the first document is kept, the one at fault is not
    assert places(parsed.diagnostics) == [("yaml-alias-budget", 7, 1)]
    assert "more than 2 aliases" in parsed.diagnostics[0].message


def test_merge_keys_count_as_aliases() -> None:
    """`<<: *base` follows an alias, and is located at the merge key."""
    text = "base: &b {x: 1}\none: {<<: *b}\ntwo:\n  <<: *b\n"
    parsed = parse_source(text, "f.yaml", Limits(max_aliases=1))
    assert places(parsed.diagnostics) == [("yaml-alias-budget", 4, 3)]


def test_a_large_file_with_too_many_nodes_is_refused_before_they_are_composed() -> None:
    """A file past 64 KiB has its nodes counted from the parser's events; the first one past max_nodes is
    reported (a 1 MiB list of numbers would otherwise take some 150 MB as composed nodes)."""
    text = "a: [" + "1, " * 30_000 + "1]\n"
    assert parse_source(text, "f.yaml", Limits(max_nodes=40_000)).diagnostics == ()
    parsed = parse_source(text, "f.yaml", Limits(max_nodes=20_000))
    assert parsed.documents == ()
    # node 20,001: the mapping, its key and the list come first, so it is item 19,997 (from 0), at 5 + 3 * i
    assert places(parsed.diagnostics) == [("yaml-node-budget", 1, 5 + 3 * 19_997)]


def test_the_node_budget_counts_nodes_that_aliases_add() -> None:
    """Below the alias budgets, the nodes aliases add still count toward the file's node budget."""
    text = "a: &a [1, 2, 3]\nb: [*a, *a]\n"
    parsed = parse_source(text, "f.yaml", Limits(max_nodes=8))
    assert places(parsed.diagnostics) == [("yaml-node-budget", 2, 4)]


def test_nesting_past_the_depth_limit_is_located_at_the_first_level_too_deep() -> None:
    """The mapping or list one level past max_depth is reported, with its line and column."""
    text = "a:\n  b:\n    c: [[1]]\n"
    assert parse_source(text, "f.yaml", Limits(max_depth=5)).diagnostics == ()
    parsed = parse_source(text, "f.yaml", Limits(max_depth=4))
    assert places(parsed.diagnostics) == [("yaml-depth", 3, 9)]
    assert parsed.diagnostics[0].json_path == "$.a.b.c[0]"


def test_deep_nesting_is_a_diagnostic_not_a_recursion_error() -> None:
    """Five hundred nested lists (past Python's recursion limit when built naively) are refused cleanly."""
    parsed = parse_source("a: " + "[" * 500 + "]" * 500 + "\n", "f.yaml")
    assert places(parsed.diagnostics) == [("yaml-depth", 1, 67)]


def test_nesting_brought_in_by_an_alias_counts_toward_the_depth_limit() -> None:
    """An alias of a nested anchor placed deep inside another structure counts its full depth."""
    text = "a: &a [[[1]]]\nb: [[*a]]\n"
    assert parse_source(text, "f.yaml", Limits(max_depth=6)).diagnostics == ()
    parsed = parse_source(text, "f.yaml", Limits(max_depth=5))
    assert places(parsed.diagnostics) == [("yaml-depth", 2, 5)]  # the list holding the alias


@pytest.mark.parametrize(
    "literal",
    [
        "9" * 10_000,
        "-" + "9" * 10_000,
        "9223372036854775808",  # 2**63
        "-9223372036854775809",
        "0x" + "f" * 17,
        "0o" + "7" * 22,
    ],
)
def test_integers_outside_64_bits_are_number_range_errors(literal: str) -> None:
    """Integers with too many digits or outside [-2**63, 2**63) are refused, never converted past a limit."""
    parsed = parse_source(f"spec:\n  timeout: {literal}\n", "f.yaml")
    (doc,) = parsed.documents
    assert places(doc.diagnostics) == [("number-range", 2, 12)]
    assert doc.diagnostics[0].json_path == "$.spec.timeout"
    assert len(doc.diagnostics[0].message) < 100  # the literal itself is not quoted


def test_integers_at_the_64_bit_bounds_are_accepted() -> None:
    """The largest and smallest 64-bit integers, and zero-padded small ones, are plain integers."""
    doc = parse_source(
        f"a: {2**63 - 1}\nb: {-(2**63)}\nc: {'0' * 100}7\nd: !!int '12'\n", "f.yaml"
    ).documents[0]
    assert doc.data == {"a": 2**63 - 1, "b": -(2**63), "c": 7, "d": 12}
    assert doc.diagnostics == ()


def test_tagged_and_listed_big_integers_are_number_range_errors() -> None:
    """An explicit !!int tag and a list item take the same check as a plain mapping value."""
    big = "1" * 5000
    (doc,) = parse_source(f"a: !!int '{big}'\nb: [{big}]\n", "f.yaml").documents
    assert places(doc.diagnostics) == [("number-range", 1, 4), ("number-range", 2, 5)]


def test_a_float_overflowing_to_infinity_is_a_number_range_error() -> None:
    """`1e999` overflows a float: number-range, while a written `.inf` stays invalid-number."""
    (doc,) = parse_source("a: 1e999\nb: -" + "9" * 400 + ".5\nc: .inf\n", "f.yaml").documents
    assert places(doc.diagnostics) == [
        ("number-range", 1, 4),
        ("number-range", 2, 4),
        ("invalid-number", 3, 4),
    ]


def test_a_10000_digit_integer_in_a_webhook_is_reported_once() -> None:
    """The schema does not add a second error for the refused number: one diagnostic, at the value."""
    text = HEADER + SPEC + "  config: {timeout: " + "9" * 10_000 + "}\n"
    result = build_file(text.encode(), "hook.yaml").result
    assert places(result.diagnostics) == [("number-range", 8, 21)]
    assert result.webhooks == ()


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """A file larger than max_file_bytes is a file-too-large error at 1:1; its content is never parsed."""
    path = tmp_path / "big.yaml"
    path.write_bytes(b"a: [" + b"1, " * 400_000 + b"1]\n" + b"\xff")  # invalid UTF-8 at the end
    record = read_and_check(str(path), "big.yaml")
    assert places(record.diagnostics) == [("file-too-large", 1, 1)]
    assert f"larger than {MIB} bytes" in record.diagnostics[0].message
    small = read_and_check(str(path), "big.yaml", Limits(max_file_bytes=2 * MIB))
    assert "file-too-large" not in {d.rule for d in small.diagnostics}


def test_the_size_limit_applies_to_bytes_given_directly() -> None:
    """Bytes checked without a file (a git revision's blob) meet the same limit."""
    result = build_file(b"a: 1\n" * 10, "x.yaml", Limits(max_file_bytes=49)).result
    assert places(result.diagnostics) == [("file-too-large", 1, 1)]


def test_a_tree_with_a_budget_error_is_invalid_and_the_other_files_load(tmp_path: Path) -> None:
    """One hostile file fails the tree with its located diagnostic; the other files still load."""
    (tmp_path / "bomb.yaml").write_text(alias_bomb())
    (tmp_path / "good.yaml").write_text(HEADER.replace("bomb", "good") + SPEC)
    tree = load_tree(tmp_path)
    assert [(Path(d.file).name, d.rule, d.line) for d in tree.diagnostics] == [
        ("bomb.yaml", "yaml-alias-budget", 10)
    ]
    assert [h.name for h in tree.webhooks] == ["good"]


def test_reconcile_max_file_bytes_flag(tmp_path: Path) -> None:
    """`reconcile --max-file-bytes N` refuses larger files with file-too-large and exit 1."""
    (tmp_path / "hook.yaml").write_text(HEADER + SPEC)
    args = [RECONCILE, "--check", str(tmp_path)]
    assert subprocess.run(args, capture_output=True, text=True, timeout=60).returncode == 0
    run = subprocess.run([*args, "--max-file-bytes", "50"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "hook.yaml:1:1: error[file-too-large]" in run.stdout


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (alias_bomb(), "bomb.yaml:10:9: error[yaml-alias-budget]"),
        (
            HEADER + SPEC + "  config: {timeout: " + "9" * 10_000 + "}\n",
            "bomb.yaml:8:21: error[number-range]",
        ),
        (HEADER + "  labels: [" + "1," * 500_000 + "1]\n", "bomb.yaml:5:399990: error[yaml-node-budget]"),
    ],
    ids=["alias-bomb", "10000-digits", "1-mib-of-numbers"],
)
def test_reconcile_check_on_a_hostile_file_exits_1_with_small_memory(
    tmp_path: Path, content: str, expected: str
) -> None:
    """`reconcile --check` on a hostile file exits 1 (not 3) with the diagnostic, peak RSS under 200 MB."""
    (tmp_path / "bomb.yaml").write_text(content)
    code = (
        "import resource, subprocess, sys\n"
        "run = subprocess.run([sys.argv[2], '--check', sys.argv[1]],"
        " capture_output=True, text=True, timeout=120)\n"
        "print(run.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.stdout.write(run.stdout + run.stderr)\n"
    )
    # A fresh parent process, so RUSAGE_CHILDREN holds this one reconcile (KiB on Linux), and the
    # address space is capped so that a regression fails with an error instead of swapping the machine.
    limit = 1024 * MIB
    run = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path), RECONCILE],
        capture_output=True,
        text=True,
        timeout=150,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)),
    )
    first, _, output = run.stdout.partition("\n")
    returncode, max_rss_kib = map(int, first.split())
    assert returncode == 1, output
    assert expected in output
    assert "Traceback" not in output
    assert max_rss_kib < 200 * 1024
