"""The observability kit (deploy/observability): alerting rules and a Grafana dashboard over the metrics the
dispatcher really exports (dispatcher/metrics.py), checked by promtool where it is installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from dispatcher.metrics import Metrics
from dispatcher.store.base import DeliveryStatus
from tests.requires import requires

KIT = Path(__file__).resolve().parents[2] / "deploy" / "observability"
PROMTOOL = shutil.which("promtool")
# Promtool would need the dashboard's Grafana variables replaced by something PromQL parses.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$instance": ".*"}
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
_KEYWORDS |= {"offset", "inf", "nan"}


def exported_names() -> set[str]:
    """Every series name a dispatcher's /metrics can carry (counters' _total, histograms' series)."""
    metrics = Metrics()
    metrics.watch_queue(lambda: dict.fromkeys(DeliveryStatus, 0), lambda: None)
    names: set[str] = set()
    for family in metrics.registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
        else:
            names.add(family.name)
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, keywords, labels or strings)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, regexes)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for m in re.finditer(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", text):
        if m.group(1).lower() not in _KEYWORDS:
            names.add(m.group(1))
    return names


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((KIT / "alerts.yaml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads((KIT / "dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(re.sub(r"^label_values\(([^,]+),.*\)$", r"\1", var["definition"]))
    return exprs


def test_metric_name_extraction_sees_through_promql() -> None:
    """The extractor keeps series names and drops functions, label names, strings and keywords."""
    expr = 'sum by (le) (rate(a_bucket{x="y z",le!~"b|c"}[5m])) / on (i) b_total > bool 0 and c'
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}


def test_every_metric_the_rules_use_is_exported() -> None:
    """No alert watches a series the dispatcher does not export (a typo would never fire)."""
    exported = exported_names()
    for rule in _rules():
        used = metric_names(rule["expr"])
        assert used, rule["alert"]
        assert used <= exported, f"{rule['alert']}: {sorted(used - exported)} not exported"


def test_every_metric_the_dashboard_uses_is_exported() -> None:
    """Every panel query and variable of the dashboard reads series the dispatcher exports."""
    exported = exported_names()
    exprs = _dashboard_exprs()
    assert len(exprs) >= 10
    for expr in exprs:
        used = metric_names(expr)
        assert used and used <= exported, f"{expr}: {sorted(used - exported)} not exported"


def test_the_issues_alerts_are_there_with_severity_and_summary() -> None:
    """Reload failing, dead letters growing, oldest pending age and an endpoint failing each have an alert."""
    rules = _rules()
    by_metric = {name: rule for rule in rules for name in metric_names(rule["expr"])}
    for needed in (
        "config_last_reload_successful",
        "dispatch_deliveries_total",
        "dispatch_oldest_open_delivery_age_seconds",
        "dispatch_queue_depth",
    ):
        assert needed in by_metric, needed
    assert len({r["alert"] for r in rules}) == len(rules)
    for rule in rules:
        assert rule["labels"]["severity"] in ("info", "warning", "critical")
        assert rule["annotations"]["summary"]


def test_dashboard_is_importable_json_with_a_datasource_variable() -> None:
    """The dashboard has a uid, unique panel ids, and every query uses the ${datasource} variable."""
    dashboard = json.loads((KIT / "dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {"${datasource}"}


@requires(PROMTOOL is not None, "promtool (Debian package prometheus)")
def test_promtool_checks_the_rules_and_their_unit_tests() -> None:
    """`promtool check rules` accepts the file; `promtool test rules` sees each alert fire when it should."""
    assert PROMTOOL is not None, "promtool is missing: .ci/run installs Debian's prometheus"
    for command in (["check", "rules", "alerts.yaml"], ["test", "rules", "alerts.test.yaml"]):
        done = subprocess.run([PROMTOOL, *command], cwd=KIT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


@requires(PROMTOOL is not None, "promtool (Debian package prometheus)")
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each dashboard query, its Grafana variables filled in, is valid PromQL (as a recording rule)."""
    assert PROMTOOL is not None, "promtool is missing: .ci/run installs Debian's prometheus"
    rules = []
    for i, expr in enumerate(_dashboard_exprs()):
        for var, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(var, value)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
