"""``dispatch``'s exit-code table and its duration-only ``--retention``: one name per code, used by all."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

import dispatcher.cli as cli
from dispatcher import supervise
from dispatcher.app import RunOptions
from dispatcher.durations import parse_duration, parse_since
from dispatcher.exitcodes import ExitCode

ROOT = Path(__file__).resolve().parents[2]


def test_the_table_keeps_its_values() -> None:
    """The codes operators and unit files rely on stay what they are."""
    assert {c.name: int(c) for c in ExitCode} == {
        "OK": 0,
        "FAILURE": 1,
        "USAGE": 2,
        "UNREACHABLE": 3,
        "INTERNAL_FAILURE": 70,
    }


def test_click_errors_exit_with_the_table_codes() -> None:
    """click's own errors (no store, no such ID; bad options) exit FAILURE and USAGE."""
    assert click.ClickException("x").exit_code == ExitCode.FAILURE
    assert click.UsageError("x").exit_code == ExitCode.USAGE
    assert supervise.EXIT_INTERNAL_FAILURE is ExitCode.INTERNAL_FAILURE


@pytest.mark.parametrize("module", ["dispatcher/cli.py", "dispatcher/receiver.py"])
def test_no_command_exits_with_a_bare_number(module: str) -> None:
    """Every ``sys.exit`` of the commands, and every code ``run_receiver`` returns, is named in the table."""
    tree = ast.parse((ROOT / module).read_text(encoding="utf-8"))
    bare = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "exit"
        and any(isinstance(arg, ast.Constant) for arg in node.args)
    ]
    receiver = [f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name == "run_receiver"]
    for function in receiver:
        bare += [
            r.lineno
            for r in ast.walk(function)
            if isinstance(r, ast.Return) and isinstance(r.value, ast.Constant)
        ]
    assert bare == []


def test_publish_to_no_dispatcher_is_unreachable(tmp_path: Path) -> None:
    """``publish`` to a socket nobody listens on exits UNREACHABLE (3), naming the socket."""
    events = tmp_path / "events.ndjson"
    events.write_text('{"event": {"type": "t"}}\n')
    result = CliRunner().invoke(cli.main, ["publish", "--socket", str(tmp_path / "none.sock"), str(events)])
    assert result.exit_code == ExitCode.UNREACHABLE and "none.sock" in result.output


def test_inspecting_a_missing_store_is_a_failure(tmp_path: Path) -> None:
    """``deliveries list`` without a store at ``--state`` exits FAILURE (1) with one line."""
    result = CliRunner().invoke(cli.main, ["deliveries", "list", "--state", str(tmp_path / "nothing")])
    assert result.exit_code == ExitCode.FAILURE and "no store at" in result.output


def test_retry_with_ids_and_all_dead_is_a_usage_error(tmp_path: Path) -> None:
    """``retry 1 --all-dead`` asks two things at once: USAGE (2)."""
    for group in ("deliveries", "callbacks"):
        result = CliRunner().invoke(cli.main, [group, "retry", "1", "--all-dead", "--state", str(tmp_path)])
        assert result.exit_code == ExitCode.USAGE


class FakeDispatcher:
    """Stands in for the dispatcher: records the options ``run`` built and exits with ``code``."""

    seen: list[RunOptions] = []
    code = ExitCode.OK

    def __init__(self, options: RunOptions) -> None:
        FakeDispatcher.seen.append(options)

    def run(self) -> int:
        return FakeDispatcher.code


def run_with(monkeypatch: Any, tmp_path: Path, *extra: str) -> click.testing.Result:
    monkeypatch.setattr(cli, "Dispatcher", FakeDispatcher)
    monkeypatch.setattr(cli, "configure", lambda *args: None)
    FakeDispatcher.seen = []
    args = ["run", "--stdin", "--config", str(tmp_path), "--state", str(tmp_path / "s"), *extra]
    return CliRunner().invoke(cli.main, args)


@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        (None, 7 * 86400),
        ("7d", 604800),
        ("12h", 43200),
        ("30m", 1800),
        ("90s", 90),
        ("1.5h", 5400),
        ("2w", 1209600),
    ],
)
def test_retention_is_a_duration_in_seconds(
    monkeypatch: Any, tmp_path: Path, given: str | None, seconds: float
) -> None:
    """``--retention`` (default 7d) reaches the dispatcher as seconds."""
    result = run_with(monkeypatch, tmp_path, *(("--retention", given) if given else ()))
    assert result.exit_code == ExitCode.OK, result.output
    (options,) = FakeDispatcher.seen
    assert options.retention_seconds == seconds


@pytest.mark.parametrize(
    ("given", "fragment"),
    [
        ("2026-11-28T10:00Z", "is not a duration"),  # --since takes it; a retention is not a point in time
        ("7", "is not a duration"),
        ("7 days", "is not a duration"),
        ("-1d", "is not a duration"),
        ("1y", "is not a duration"),
        ("", "is not a duration"),
        ("0s", "positive duration"),
    ],
)
def test_a_retention_that_is_not_a_positive_duration_is_a_usage_error(
    monkeypatch: Any, tmp_path: Path, given: str, fragment: str
) -> None:
    """Anything but a positive duration is a click error naming --retention and the value; nothing starts."""
    result = run_with(monkeypatch, tmp_path, "--retention", given)
    assert result.exit_code == ExitCode.USAGE
    assert "--retention" in result.output and fragment in result.output and repr(given) in result.output
    assert FakeDispatcher.seen == []


def test_run_passes_the_dispatchers_exit_code_through(monkeypatch: Any, tmp_path: Path) -> None:
    """An internal failure inside the dispatcher is the process's exit code (70)."""
    monkeypatch.setattr(FakeDispatcher, "code", ExitCode.INTERNAL_FAILURE)
    assert run_with(monkeypatch, tmp_path).exit_code == ExitCode.INTERNAL_FAILURE


def test_durations_and_since_share_one_grammar() -> None:
    """A duration is a number and a unit; ``--since`` takes one (as an age) or an ISO time."""
    assert parse_duration(" 45m ") == 2700
    assert parse_duration("9" * 400 + "w") is None  # not a finite duration
    assert parse_duration("10:00") is None
    assert parse_since("2h", 10_000.0) == 10_000.0 - 7200
    assert parse_since("2026-11-28T10:00Z", 0.0) == 1795860000.0
    with pytest.raises(click.BadParameter, match="neither a duration"):
        parse_since("soon", 0.0)
