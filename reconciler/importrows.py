"""The rows of dj-whisperer exports, and the findings about them: what ``reconcile import`` reads. Pure.

An export is the parsed JSON of one file: Django's ``dumpdata`` (a list of ``{"model", "pk", "fields"}``), or
the REST API's answer (a list of rows with ``id``, a page with ``results``, or one row).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.model import Severity

WEBHOOK_MODEL = "whisperer.webhook"
EVENT_MODEL = "whisperer.webhookevent"


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem or notice about one row of one export file. Never holds a secret value."""

    severity: Severity
    source: str  # the export file, as given
    where: str  # e.g. "$[3] (id 7)"; "" for the file as a whole
    message: str

    def render(self) -> str:
        where = f" {self.where}:" if self.where else ""
        return f"{self.source}:{where} {self.severity.value}: {self.message}"


@dataclass(frozen=True, slots=True)
class Row:
    """One row of an export: where it is, its id, its columns."""

    source: str
    where: str
    pk: Any
    fields: Mapping[str, Any]


class Problems:
    """Findings of one import, in the order found."""

    def __init__(self) -> None:
        self.found: list[Finding] = []

    def error(self, row: Row, message: str) -> None:
        self.found.append(Finding(Severity.ERROR, row.source, row.where, message))

    def warning(self, row: Row, message: str) -> None:
        self.found.append(Finding(Severity.WARNING, row.source, row.where, message))

    def about_file(self, severity: Severity, source: str, message: str) -> None:
        self.found.append(Finding(severity, source, "", message))

    @property
    def errors(self) -> int:
        return sum(1 for f in self.found if f.severity is Severity.ERROR)


def split_rows(source: str, data: Any, hooks: list[Row], events: list[Row], problems: Problems) -> None:
    """Sort the rows of one export into webhook and event rows (dumpdata, REST list, REST page)."""
    prefix = "$"
    if isinstance(data, dict) and isinstance(data.get("results"), list):
        data, prefix = data["results"], "$.results"
    elif isinstance(data, dict) and ("target_url" in data or "request_payload" in data):
        data, prefix = [data], ""
    if not isinstance(data, list):
        message = "not a dj-whisperer export: expected a list of rows or a page with results"
        problems.about_file(Severity.ERROR, source, message)
        return
    others: dict[str, int] = {}
    for i, item in enumerate(data):
        where = f"{prefix}[{i}]" if prefix else "$"
        if isinstance(item, dict) and isinstance(item.get("fields"), dict) and "model" in item:
            model = str(item["model"]).lower()
            row = Row(source, _where(where, item.get("pk")), item.get("pk"), item["fields"])
            if model == WEBHOOK_MODEL:
                hooks.append(row)
            elif model == EVENT_MODEL:
                events.append(row)
            else:
                others[model] = others.get(model, 0) + 1
        elif isinstance(item, dict) and "target_url" in item:
            hooks.append(Row(source, _where(where, item.get("id")), item.get("id"), item))
        elif isinstance(item, dict) and "request_payload" in item:
            events.append(Row(source, _where(where, item.get("id")), item.get("id"), item))
        else:
            problems.about_file(
                Severity.ERROR, source, f"{where} is neither a webhook nor a webhook event row"
            )
    for model, count in sorted(others.items()):
        problems.about_file(Severity.WARNING, source, f"{count} rows of model {model!r} ignored")


def _where(path: str, pk: Any) -> str:
    return f"{path} (id {pk})" if isinstance(pk, int | str) and not isinstance(pk, bool) else path


def json_field(row: Row, key: str, default: Any, problems: Problems) -> Any:
    """A JSON column: older Django versions dump it as a JSON string, newer ones as the value."""
    value = row.fields.get(key, default)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            problems.error(row, f"{key} is a string that is not JSON")
            return None
    return default if value is None else value


def shown(value: Any) -> str:
    """A value of an export quoted for a message (never used for secret columns), shortened."""
    text = repr(value)
    return text if len(text) <= 80 else text[:76] + "...'"
