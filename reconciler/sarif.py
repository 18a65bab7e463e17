"""Diagnostics as a SARIF 2.1.0 log, the format GitHub code scanning uploads (``reconcile --format sarif``).

One run; ``tool.driver.rules`` describes every documented rule (and any rule the run reports without
documentation), each result names its rule by id and index and points at file, line and column. Choices:

- Levels: ``error`` and ``warning`` as the diagnostic says; ``--strict`` does not rewrite them (as in every
  format).
- Columns count code points (the YAML reader's unit), said with ``columnKind`` so a consumer does not assume
  UTF-16 units.
- A relative path stays relative (to ``%SRCROOT%``, the directory reconcile ran in: the repository root in
  CI); an absolute one becomes a ``file:`` URI.
- ``partialFingerprints`` hash rule, file, JSON path and message, not the line: an alert survives edits that
  only move it, and uploads through the REST API (which computes no fingerprints) do not duplicate alerts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote

from reconciler.model import Diagnostic
from reconciler.ruledocs import RULE_DOCS, RuleDoc, describe

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
SOURCE_ROOT = "%SRCROOT%"
FINGERPRINT_KEY = "reconcile/v1"


def build_sarif_log(diagnostics: Sequence[Diagnostic], *, tool_version: str) -> dict[str, Any]:
    """The SARIF log object (plain JSON data) for ``diagnostics``, in their order (pure)."""
    docs = dict(RULE_DOCS)
    for d in diagnostics:
        docs.setdefault(d.rule, describe(d.rule, d.severity))
    index = {rule: i for i, rule in enumerate(docs)}
    driver = {
        "name": "reconcile",
        "fullName": "reconcile (webhooks-as-code)",
        "version": tool_version,
        "rules": [_rule(doc) for doc in docs.values()],
    }
    return {
        "$schema": SARIF_SCHEMA_URI,
        "version": SARIF_VERSION,
        "runs": [
            {
                "tool": {"driver": driver},
                "columnKind": "unicodeCodePoints",
                "results": [_result(d, index[d.rule]) for d in diagnostics],
            }
        ],
    }


def _rule(doc: RuleDoc) -> dict[str, Any]:
    return {
        "id": doc.id,
        "shortDescription": {"text": doc.summary},
        "fullDescription": {"text": doc.help},
        "help": {"text": doc.help},
        "defaultConfiguration": {"level": doc.severity.value},
    }


def _result(d: Diagnostic, rule_index: int) -> dict[str, Any]:
    location: dict[str, Any] = {
        "physicalLocation": {
            "artifactLocation": artifact_location(d.file),
            "region": {"startLine": max(d.line, 1), "startColumn": max(d.column, 1)},
        },
        "logicalLocations": [{"fullyQualifiedName": d.json_path}],
    }
    return {
        "ruleId": d.rule,
        "ruleIndex": rule_index,
        "level": d.severity.value,
        "message": {"text": d.message},
        "locations": [location],
        "partialFingerprints": {FINGERPRINT_KEY: fingerprint(d)},
    }


def artifact_location(file: str) -> dict[str, str]:
    """A SARIF ``artifactLocation`` for a diagnostic's path: relative to ``%SRCROOT%`` unless absolute."""
    path = PurePosixPath(file)
    if path.is_absolute():
        return {"uri": "file://" + quote(path.as_posix())}
    return {"uri": quote(path.as_posix()), "uriBaseId": SOURCE_ROOT}


def fingerprint(d: Diagnostic) -> str:
    """A line-independent identity of a diagnostic: the same problem keeps it when lines move."""
    key = "\0".join((d.rule, PurePosixPath(d.file).as_posix(), d.json_path, d.message))
    return hashlib.sha256(key.encode("utf-8")).hexdigest()
