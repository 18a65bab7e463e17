"""Reporters (text, JSON, GitHub annotations, SARIF) and the route-test explanation they print."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jsonschema
from click.testing import CliRunner

from reconciler.cli import reconcile
from reconciler.explain import Outcome, explain_route, render_route_text, route_to_json
from reconciler.loader import load_tree
from reconciler.model import Diagnostic, Severity, Source, Webhook
from reconciler.plan import build_plan
from reconciler.report import (
    PlanSection,
    Report,
    escape_data,
    escape_property,
    render_github,
    render_json,
    render_sarif,
    render_text,
    summary_line,
)
from reconciler.routing import build_routing_table
from reconciler.ruledocs import RULE_DOCS
from reconciler.sarif import artifact_location, fingerprint


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


# --- sarif -------------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
SARIF_SCHEMA = json.loads((REPO / "tests/vendor/sarif-2.1.0-rtm.5.json").read_text(encoding="utf-8"))


def sarif(report: Report) -> dict[str, Any]:
    log: dict[str, Any] = json.loads(render_sarif(report))
    return log


def sarif_schema_errors(log: Any) -> list[str]:
    validator = jsonschema.Draft4Validator(SARIF_SCHEMA)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(log)]


def test_sarif_validates_against_the_sarif_2_1_0_schema() -> None:
    """SARIF output for the invalid fixtures (every kind of problem) is valid SARIF 2.1.0."""
    tree = load_tree("tests/reconciler/fixtures/invalid")
    assert tree.diagnostics
    assert sarif_schema_errors(sarif(Report(tree))) == []


def test_sarif_schema_check_can_fail() -> None:
    """The vendored SARIF schema rejects a log that lacks a result's message (the check is not vacuous)."""
    log = sarif(Report(FakeTree(DIAGS)))
    del log["runs"][0]["results"][0]["message"]
    assert sarif_schema_errors(log)


def test_sarif_results_carry_rule_level_message_and_region() -> None:
    """Each result names its rule, level and message, and points at file, line and column, sorted."""
    run = sarif(Report(FakeTree(DIAGS)))["runs"][0]
    first = run["results"][0]
    assert first["ruleId"] == "yaml-duplicate-key"
    assert first["level"] == "error"
    assert first["message"] == {"text": "duplicate key 'kind'"}
    (location,) = first["locations"]
    assert location["physicalLocation"] == {
        "artifactLocation": {"uri": "webhooks.d/a.yaml", "uriBaseId": "%SRCROOT%"},
        "region": {"startLine": 2, "startColumn": 5},
    }
    assert location["logicalLocations"] == [{"fullyQualifiedName": "$"}]
    assert [r["level"] for r in run["results"]] == ["error", "warning", "error"]
    assert run["columnKind"] == "unicodeCodePoints"


def test_sarif_describes_every_rule_it_reports() -> None:
    """``tool.driver.rules`` has an entry with a summary and help for every result's rule, at its index."""
    tree = load_tree("tests/reconciler/fixtures/invalid")
    run = sarif(Report(tree))["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    for result in run["results"]:
        rule = rules[result["ruleIndex"]]
        assert rule["id"] == result["ruleId"]
        assert rule["shortDescription"]["text"] and rule["help"]["text"]
        assert rule["defaultConfiguration"]["level"] in ("error", "warning")
    assert {r["id"] for r in rules} >= set(RULE_DOCS)


def test_sarif_describes_an_undocumented_rule_plainly() -> None:
    """A rule id without documentation still gets a rule entry, and the log stays valid."""
    log = sarif(Report(FakeTree((err("w/a.yaml", 1, 1, "odd", rule="brand-new-rule"),))))
    run = log["runs"][0]
    rule = run["tool"]["driver"]["rules"][run["results"][0]["ruleIndex"]]
    assert rule["id"] == "brand-new-rule"
    assert rule["help"]["text"]
    assert sarif_schema_errors(log) == []


def test_sarif_of_a_valid_tree_has_an_empty_results_list() -> None:
    """No diagnostics is an empty ``results`` array (code scanning then closes fixed alerts)."""
    log = sarif(Report(FakeTree()))
    assert log["version"] == "2.1.0"
    assert log["runs"][0]["results"] == []
    assert sarif_schema_errors(log) == []


def test_sarif_keeps_warnings_as_warnings_under_strict() -> None:
    """--strict fails the run but does not turn a warning result into an error."""
    run = sarif(Report(FakeTree(DIAGS), strict=True))["runs"][0]
    assert [r["level"] for r in run["results"] if r["ruleId"] == "unknown-event-type"] == ["warning"]


def test_sarif_uris_are_relative_to_the_source_root_or_file_uris() -> None:
    """Relative paths stay relative (``./`` dropped, spaces percent-encoded); absolute ones are file URIs."""
    assert artifact_location("./webhooks.d/my hook.yaml") == {
        "uri": "webhooks.d/my%20hook.yaml",
        "uriBaseId": "%SRCROOT%",
    }
    assert artifact_location("/srv/repo/webhooks.d/a.yaml") == {"uri": "file:///srv/repo/webhooks.d/a.yaml"}


def test_sarif_fingerprint_survives_line_moves_only() -> None:
    """The fingerprint ignores line and column but changes with the rule, file, path or message."""
    d = err("webhooks.d/x.yaml", 7, 3, "'target_url' is a required property", path="$.spec")
    assert fingerprint(replace(d, line=70, column=1)) == fingerprint(d)
    for changed in (
        replace(d, rule="other"),
        replace(d, file="webhooks.d/y.yaml"),
        replace(d, json_path="$.spec.config"),
        replace(d, message="another"),
    ):
        assert fingerprint(changed) != fingerprint(d)


def test_every_documented_rule_matches_what_the_rules_report() -> None:
    """Each diagnostic of the invalid fixtures has a documented rule with the same severity."""
    tree = load_tree("tests/reconciler/fixtures/invalid")
    for d in tree.diagnostics:
        assert d.rule in RULE_DOCS, d.rule
        assert RULE_DOCS[d.rule].severity is d.severity, d.rule


def test_every_rule_id_in_the_source_is_documented() -> None:
    """Every rule id the reconciler's source can emit has an entry in ``reconciler.ruledocs``."""
    emitted: set[str] = set()
    for source in (REPO / "reconciler").glob("*.py"):
        text = source.read_text(encoding="utf-8")
        emitted |= set(re.findall(r"Severity\.(?:ERROR|WARNING),\s*\"([a-z][a-z0-9-]*)\"", text))
        emitted |= set(re.findall(r"\.problem\(\s*\"([a-z][a-z0-9-]*)\"", text))
    assert len(emitted) >= 20  # the scan finds the rules (it cannot pass by finding none)
    assert sorted(emitted - set(RULE_DOCS)) == []


def test_cli_format_sarif_prints_one_log_and_exits_like_the_others() -> None:
    """``reconcile --check --format sarif`` prints only the SARIF log and exits 1 for an invalid tree."""
    result = CliRunner().invoke(
        reconcile, ["--check", "--format", "sarif", "tests/reconciler/fixtures/invalid"]
    )
    assert result.exit_code == 1
    log = json.loads(result.stdout)
    assert log["runs"][0]["tool"]["driver"]["name"] == "reconcile"
    assert sarif_schema_errors(log) == []
