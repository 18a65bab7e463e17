"""Reporters: render the outcome of one ``reconcile`` run as text, JSON, GitHub workflow commands or SARIF.

Pure functions from a ``Report`` (the loaded tree plus the optional plan and route test) to a string; the CLI
writes the string to stdout. Every format renders the same diagnostics in the same order (file, line, column).

``--strict`` does not rewrite severities: a warning stays a warning in every format (so the annotation a
reviewer sees says what the rule says), but the run fails, ``"valid"`` is false in JSON, and the text summary
says the warnings fail the run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Protocol

from reconciler.explain import RouteExplanation, render_route_text, route_to_json
from reconciler.model import Diagnostic, Webhook
from reconciler.plan import Plan, plan_to_json, render_plan_text
from reconciler.sarif import build_sarif_log

FORMAT_VERSION = "1.0"

#: GitHub shows at most this many error (and as many warning) annotations per step and drops the rest.
GITHUB_ANNOTATIONS_PER_STEP = 10


class CheckedTree(Protocol):
    """What the reporters need of a loaded tree (``reconciler.loader.TreeResult`` has it)."""

    @property
    def directory(self) -> str: ...
    @property
    def files(self) -> Sequence[object]: ...
    @property
    def webhooks(self) -> Sequence[Webhook]: ...
    @property
    def diagnostics(self) -> Sequence[Diagnostic]: ...
    @property
    def revision(self) -> str: ...
    @property
    def error_count(self) -> int: ...
    @property
    def warning_count(self) -> int: ...


@dataclass(frozen=True)
class PlanSection:
    """The plan against ``--against REF``; ``plan`` is None when the checked tree has errors."""

    ref: str
    kind: str  # "directory" | "git"
    commit: str | None  # the commit REF resolved to (git revisions only)
    baseline_error_count: int  # errors in the REF tree: its invalid documents are left out of the plan
    plan: Plan | None


@dataclass(frozen=True)
class Report:
    tree: CheckedTree
    strict: bool = False
    plan: PlanSection | None = None
    route: RouteExplanation | None = None

    @property
    def passed(self) -> bool:
        """Whether the run succeeds: no errors, and no warnings either under ``--strict``."""
        return self.tree.error_count == 0 and not (self.strict and self.tree.warning_count > 0)


def sorted_diagnostics(diagnostics: Sequence[Diagnostic]) -> list[Diagnostic]:
    """Diagnostics by file, line, column; stable, so the loader's order breaks ties."""
    return sorted(diagnostics, key=lambda d: (d.file, d.line, d.column))


# --- text --------------------------------------------------------------------------------------------------


def render_text(report: Report) -> str:
    """``file:line:col: severity[rule]: message`` per diagnostic, a summary line, then plan and route."""
    out = [f"{_location(d)}: {d.severity.value}[{d.rule}]: {_one_line(d.message)}\n" for d in _diags(report)]
    out.append(summary_line(report) + "\n")
    if report.plan is not None:
        out.append("\n" + _plan_text(report.plan))
    if report.route is not None:
        out.append("\n" + _route_text(report))
    return "".join(out)


def _diags(report: Report) -> list[Diagnostic]:
    return sorted_diagnostics(report.tree.diagnostics)


def _location(d: Diagnostic) -> str:
    return f"{d.file}:{d.line}:{d.column}"


def _one_line(message: str) -> str:
    # Some parser messages span lines; one diagnostic must stay one line for grep and editors' error parsers.
    return re.sub(r"\s*[\r\n]+\s*", " ", message.strip())


def summary_line(report: Report) -> str:
    """E.g. ``2 errors, 1 warning in 5 files`` or ``webhooks.d: 5 files, 7 webhooks valid``."""
    tree = report.tree
    files = _count(len(tree.files), "file")
    if tree.error_count:
        problems = _count(tree.error_count, "error")
        if tree.warning_count:
            problems += ", " + _count(tree.warning_count, "warning")
        return f"{tree.directory}: {problems} in {files}"
    valid = f"{tree.directory}: {files}, {_count(len(tree.webhooks), 'webhook')} valid"
    if not tree.warning_count:
        return valid
    if report.strict:
        return f"{tree.directory}: {_count(tree.warning_count, 'warning')} in {files} (failing: --strict)"
    return f"{valid} ({_count(tree.warning_count, 'warning')})"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _plan_text(section: PlanSection) -> str:
    where = f"{section.ref} ({section.commit[:12]})" if section.commit else section.ref
    head = f"Plan against {where}:\n"
    if section.baseline_error_count:
        head += (
            f"note: {section.ref} has {_count(section.baseline_error_count, 'error')}; "
            "its invalid documents are left out of the comparison\n"
        )
    if section.plan is None:
        return head + "No plan: the tree has errors.\n"
    return head + render_plan_text(section.plan)


def _route_text(report: Report) -> str:
    assert report.route is not None
    note = "note: the tree has errors; invalid documents are not routed\n" if report.tree.error_count else ""
    return note + render_route_text(report.route)


# --- json --------------------------------------------------------------------------------------------------


def render_json(report: Report) -> str:
    """One JSON object (terraform ``validate -json`` style, ``format_version`` bumps are additive)."""
    return json.dumps(report_to_json(report), ensure_ascii=False, indent=2) + "\n"


def report_to_json(report: Report) -> dict[str, Any]:
    tree = report.tree
    out: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "valid": report.passed,
        "strict": report.strict,
        "error_count": tree.error_count,
        "warning_count": tree.warning_count,
        "file_count": len(tree.files),
        "webhook_count": len(tree.webhooks),
        "directory": tree.directory,
        "revision": tree.revision,
        "diagnostics": [_diagnostic_json(d) for d in _diags(report)],
    }
    if report.plan is not None:
        section = report.plan
        out["plan"] = {
            "against": {
                "ref": section.ref,
                "kind": section.kind,
                "commit": section.commit,
                "error_count": section.baseline_error_count,
            },
            **(
                plan_to_json(section.plan) if section.plan is not None else {"skipped": "the tree has errors"}
            ),
        }
    if report.route is not None:
        out["route"] = route_to_json(report.route)
    return out


def _diagnostic_json(d: Diagnostic) -> dict[str, Any]:
    return {
        "severity": d.severity.value,
        "rule": d.rule,
        "message": d.message,
        "file": d.file,
        "line": d.line,
        "column": d.column,
        "json_path": d.json_path,
    }


# --- github ------------------------------------------------------------------------------------------------


def escape_data(value: str) -> str:
    """Escape a workflow-command message (``@actions/core`` rules): ``%``, CR, LF."""
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(value: str) -> str:
    """Escape a workflow-command property value: as data, plus ``:`` and ``,``."""
    return escape_data(value).replace(":", "%3A").replace(",", "%2C")


def render_github(report: Report) -> str:
    """``::error file=..,line=..,col=..,title=<rule>::message`` per diagnostic, then the plain summary.

    The plan and route test follow inside collapsible groups. Every variable part of a line that the runner
    parses is escaped, so a message cannot end an annotation early or start a new command.
    """
    out = [_annotation(d) for d in _diags(report)]
    tree = report.tree
    if max(tree.error_count, tree.warning_count) > GITHUB_ANNOTATIONS_PER_STEP:
        note = (
            f"{_count(tree.error_count, 'error')}, {_count(tree.warning_count, 'warning')}: GitHub shows at "
            f"most {GITHUB_ANNOTATIONS_PER_STEP} annotations of each kind per step; all are in this log."
        )
        out.append(f"::notice title=reconcile::{escape_data(note)}\n")
    out.append(summary_line(report) + "\n")
    if report.plan is not None:
        out.append(_group("Plan", _plan_text(report.plan)))
    if report.route is not None:
        out.append(_group("Route", _route_text(report)))
    return "".join(out)


def _annotation(d: Diagnostic) -> str:
    props = ",".join(
        f"{key}={escape_property(value)}"
        for key, value in (("file", d.file), ("line", str(d.line)), ("col", str(d.column)), ("title", d.rule))
    )
    return f"::{d.severity.value} {props}::{escape_data(d.message)}\n"


def _group(title: str, body: str) -> str:
    # Plan and route lines are plain log text; none can start with "::" (they start with a symbol or space).
    return f"::group::{title}\n{body}::endgroup::\n"


# --- sarif -------------------------------------------------------------------------------------------------


def render_sarif(report: Report) -> str:
    """A SARIF 2.1.0 log of the diagnostics, for code scanning (``reconciler.sarif``).

    SARIF describes findings only: the plan and the route test are left out (they are in the other formats).
    """
    log = build_sarif_log(_diags(report), tool_version=tool_version())
    return json.dumps(log, ensure_ascii=False, indent=2) + "\n"


def tool_version() -> str:
    """The installed distribution's version (what ``--version`` prints)."""
    try:
        return metadata.version("webhooks-as-code")
    except metadata.PackageNotFoundError:  # imported from a bare checkout, never installed
        return "0+unknown"


Renderer = Callable[[Report], str]

RENDERERS: dict[str, Renderer] = {
    "text": render_text,
    "json": render_json,
    "github": render_github,
    "sarif": render_sarif,
}
