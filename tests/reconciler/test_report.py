"""Reporters (text, JSON, GitHub annotations) and the route-test explanation they print."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from reconciler.explain import Outcome, explain_route, render_route_text, route_to_json
from reconciler.model import Diagnostic, Severity, Source, Webhook
from reconciler.plan import build_plan
from reconciler.report import (
    PlanSection,
    Report,
    escape_data,
    escape_property,
    render_github,
    render_json,
    render_text,
    summary_line,
)
from reconciler.routing import build_routing_table


@dataclass(frozen=True)
class FakeTree:
    """Just what the reporters read of a loader.TreeResult."""

    diagnostics: Sequence[Diagnostic] = ()
    webhooks: Sequence[Webhook] = ()
    files: Sequence[object] = field(default_factory=lambda: [object()] * 5)
    directory: str = "webhooks.d"
    revision: str = "sha256:abc"

    @property
    def error_count(self) -> int:
        return sum(1 for d in self.diagnostics if d.severity is Severity.ERROR)

    @property
    def warning_count(self) -> int:
        return sum(1 for d in self.diagnostics if d.severity is Severity.WARNING)


def err(file: str, line: int, col: int, message: str, rule: str = "schema", path: str = "$") -> Diagnostic:
    return Diagnostic(Severity.ERROR, rule, message, file, line, col, path)


def warn(file: str, line: int, col: int, message: str, rule: str = "unknown-event-type") -> Diagnostic:
    return Diagnostic(Severity.WARNING, rule, message, file, line, col, "$.spec.event_type")


DIAGS = (
    warn(
        "webhooks.d/b.yaml",
        3,
        1,
        "'pakage.created' matches no known event type; did you mean 'package.created'?",
    ),
    err("webhooks.d/x.yaml", 7, 3, "'target_url' is a required property", path="$.spec"),
    err("webhooks.d/a.yaml", 2, 5, "duplicate key 'kind'", rule="yaml-duplicate-key"),
)


def test_text_renders_one_line_per_diagnostic_sorted_by_position() -> None:
    """Text output is `file:line:col: severity[rule]: message`, sorted by file, then a summary line."""
    lines = render_text(Report(FakeTree(DIAGS))).splitlines()
    assert lines == [
        "webhooks.d/a.yaml:2:5: error[yaml-duplicate-key]: duplicate key 'kind'",
        "webhooks.d/b.yaml:3:1: warning[unknown-event-type]: 'pakage.created' matches no known event type; "
        "did you mean 'package.created'?",
        "webhooks.d/x.yaml:7:3: error[schema]: 'target_url' is a required property",
        "webhooks.d: 2 errors, 1 warning in 5 files",
    ]


def test_text_keeps_a_multi_line_message_on_one_line() -> None:
    """A parser message with newlines stays one diagnostic line."""
    diag = err(
        "w/a.yaml", 1, 1, "while parsing a block mapping\n  in line 1\nexpected <block end>", "yaml-syntax"
    )
    first = render_text(Report(FakeTree([diag]))).splitlines()[0]
    assert (
        first
        == "w/a.yaml:1:1: error[yaml-syntax]: while parsing a block mapping in line 1 expected <block end>"
    )


def test_summary_line_for_valid_and_strict_trees() -> None:
    """A valid tree says how many files and webhooks; warnings under --strict say that they fail the run."""
    hooks = [Webhook("a", "https://a.example/", ("*",)), Webhook("b", "https://b.example/", ("*",))]
    assert summary_line(Report(FakeTree(webhooks=hooks))) == "webhooks.d: 5 files, 2 webhooks valid"
    warned = FakeTree([DIAGS[0]], webhooks=hooks)
    assert summary_line(Report(warned)) == "webhooks.d: 5 files, 2 webhooks valid (1 warning)"
    assert summary_line(Report(warned, strict=True)) == "webhooks.d: 1 warning in 5 files (failing: --strict)"
    assert not Report(warned, strict=True).passed
    assert Report(warned).passed


def test_json_has_counts_and_every_diagnostic_field() -> None:
    """JSON output is one object with format_version, validity, counts, revision and located diagnostics."""
    data = json.loads(render_json(Report(FakeTree(DIAGS))))
    assert data["format_version"] == "1.0"
    assert (data["valid"], data["error_count"], data["warning_count"]) == (False, 2, 1)
    assert (data["file_count"], data["webhook_count"], data["revision"]) == (5, 0, "sha256:abc")
    assert data["diagnostics"][2] == {
        "severity": "error",
        "rule": "schema",
        "message": "'target_url' is a required property",
        "file": "webhooks.d/x.yaml",
        "line": 7,
        "column": 3,
        "json_path": "$.spec",
    }
    assert "plan" not in data
    assert "route" not in data


def test_json_valid_is_false_for_warnings_under_strict() -> None:
    """Under --strict, JSON `valid` agrees with the exit code: warnings make it false, severities stay."""
    data = json.loads(render_json(Report(FakeTree([DIAGS[0]]), strict=True)))
    assert data["valid"] is False
    assert data["diagnostics"][0]["severity"] == "warning"


def test_github_renders_annotations_with_positions_and_rule_titles() -> None:
    """GitHub output is one ::error/::warning command per diagnostic, with file, line, col and title."""
    lines = render_github(Report(FakeTree(DIAGS))).splitlines()
    assert (
        lines[0]
        == "::error file=webhooks.d/a.yaml,line=2,col=5,title=yaml-duplicate-key::duplicate key 'kind'"
    )
    assert lines[1].startswith("::warning file=webhooks.d/b.yaml,line=3,col=1,title=unknown-event-type::")
    assert lines[3] == "webhooks.d: 2 errors, 1 warning in 5 files"


def test_github_escaping_of_data_and_properties() -> None:
    """Messages escape %, CR and LF; property values also escape ':' and ','."""
    assert escape_data("100% a\r\nb: c, d") == "100%25 a%0D%0Ab: c, d"
    assert escape_property("C:\\x,y%\n") == "C%3A\\x%2Cy%25%0A"
    diag = err("dir,1/a:b.yaml", 4, 2, "bad\n::error::injected 50%", rule="rule:x,y")
    line = render_github(Report(FakeTree([diag]))).splitlines()[0]
    assert (
        line
        == "::error file=dir%2C1/a%3Ab.yaml,line=4,col=2,title=rule%3Ax%2Cy::bad%0A::error::injected 50%25"
    )


def test_github_notes_when_annotations_exceed_what_a_step_shows() -> None:
    """More than ten errors adds a notice that GitHub will not show them all."""
    many = [err("w/a.yaml", i, 1, "x") for i in range(1, 13)]
    out = render_github(Report(FakeTree(many)))
    assert out.count("::error ") == 12
    assert "::notice title=reconcile::12 errors, 0 warnings" in out


def test_plan_section_in_each_format() -> None:
    """With a plan, text shows it after the summary, JSON under "plan", GitHub inside a log group."""
    plan = build_plan({}, {"a": Webhook("a", "https://a.example/", ("*",), source=Source("w/a.yaml"))})
    section = PlanSection("HEAD", "git", "0123456789abcdef0123", 0, plan)
    report = Report(FakeTree(), plan=section)
    text = render_text(report)
    assert "Plan against HEAD (0123456789ab):\n+ a (w/a.yaml)\n" in text
    assert text.rstrip().endswith("Plan: 1 to add, 0 to change, 0 to remove.")
    data = json.loads(render_json(report))["plan"]
    assert data["against"] == {
        "ref": "HEAD",
        "kind": "git",
        "commit": "0123456789abcdef0123",
        "error_count": 0,
    }
    assert data["add"] == 1
    assert "::group::Plan\nPlan against HEAD" in render_github(report)


def test_no_plan_for_a_tree_with_errors() -> None:
    """When the checked tree has errors the plan is skipped and says so."""
    report = Report(FakeTree(DIAGS), plan=PlanSection("HEAD", "git", None, 0, None))
    assert "No plan: the tree has errors." in render_text(report)
    assert json.loads(render_json(report))["plan"]["skipped"] == "the tree has errors"


# --- route explanation -------------------------------------------------------------------------------------

ROUTE_HOOKS = [
    Webhook("erp", "https://erp.example/h", ("package.status.*",), source=Source("w/erp.yaml")),
    Webhook("all", "https://all.example/h", ("*",), source=Source("w/all.yaml")),
    Webhook("deep", "https://deep.example/h", ("package.**",), active=False, source=Source("w/deep.yaml")),
    Webhook(
        "ch3", "https://ch3.example/h", ("package.**",), match={"channel_id": 3}, source=Source("w/c.yaml")
    ),
    Webhook("other", "https://other.example/h", ("shipment.created",), source=Source("w/o.yaml")),
]


def test_route_lists_delivered_and_skipped_webhooks_with_reasons() -> None:
    """A route test names every webhook whose pattern matches: delivered, inactive, or excluded by match."""
    route = explain_route(build_routing_table(ROUTE_HOOKS, "r"), "package.status.shipped")
    assert [(h.name, h.outcome, h.patterns) for h in route.hits] == [
        ("all", Outcome.DELIVER, ("*",)),
        ("ch3", Outcome.FILTERED, ("package.**",)),
        ("deep", Outcome.INACTIVE, ("package.**",)),
        ("erp", Outcome.DELIVER, ("package.status.*",)),
    ]
    text = render_route_text(route)
    assert '  → erp  https://erp.example/h  (matched "package.status.*")' in text
    assert '  ✗ deep  https://deep.example/h  (matched "package.**"; skipped: inactive)' in text
    assert 'skipped: config.match {"channel_id": 3})' in text
    assert text.splitlines()[-1] == "package.status.shipped reaches 2 webhooks, 2 skipped."


def test_route_filter_values_compare_as_json() -> None:
    """A filter value 3 satisfies match {channel_id: 3}; the string "3" does not."""
    table = build_routing_table(ROUTE_HOOKS, "r")
    number = explain_route(table, "package.created", {"channel_id": 3})
    string = explain_route(table, "package.created", {"channel_id": "3"})
    assert "ch3" in {h.name for h in number.delivered}
    assert "ch3" not in {h.name for h in string.delivered}
    assert route_to_json(number)["filter"] == {"channel_id": 3}


def test_route_redacts_credentials_in_target_urls() -> None:
    """A token in a target URL's query or userinfo is not printed by a route test."""
    hooks = [Webhook("a", "https://u:pw@a.example/h?token=t0k", ("*",))]
    data = route_to_json(explain_route(build_routing_table(hooks, "r"), "x.y"))
    assert data["webhooks"][0]["target_url"] == "https://***@a.example/h?token=***"


def test_route_section_in_text_and_json() -> None:
    """A route test is rendered after the summary in text and under "route" in JSON."""
    route = explain_route(build_routing_table(ROUTE_HOOKS, "r"), "shipment.created")
    report = Report(FakeTree(), route=route)
    assert render_text(report).rstrip().endswith("shipment.created reaches 2 webhooks.")
    data = json.loads(render_json(report))["route"]
    assert [(w["name"], w["outcome"]) for w in data["webhooks"]] == [("all", "deliver"), ("other", "deliver")]
    assert re.search(r"::group::Route\n", render_github(report))
