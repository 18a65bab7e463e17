"""The bundled JSON Schema, its fast validity check, and its errors as positioned, secret-free diagnostics."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from reconciler.errors import SchemaError
from reconciler.fastschema import FastValidator
from reconciler.loader import load_catalogue
from reconciler.schema import CATALOGUE_PATH, WEBHOOK_SCHEMA_PATH, check_schema, is_valid, iter_schema_errors
from reconciler.yamlsource import iter_paths, parse_source

REPO = Path(__file__).resolve().parents[2]
SCHEMA: dict[str, Any] = json.loads(WEBHOOK_SCHEMA_PATH.read_text(encoding="utf-8"))
# Keywords of 2019-09/2020-12 that draft-07 editors do not know.
NEWER_KEYWORDS = {
    "$defs", "$anchor", "$dynamicRef", "$dynamicAnchor", "$recursiveRef", "$recursiveAnchor", "$vocabulary",
    "unevaluatedProperties", "unevaluatedItems", "prefixItems", "dependentRequired", "dependentSchemas",
    "minContains", "maxContains", "contentSchema",
}  # fmt: skip


def subschemas(schema: Any) -> Iterator[dict[str, Any]]:
    """Every schema object inside ``schema`` (values of properties, definitions, items, if/then/else, ...)."""
    if isinstance(schema, dict):
        yield schema
        for key, value in schema.items():
            if key in ("properties", "definitions"):
                for sub in value.values():
                    yield from subschemas(sub)
            elif key in ("items", "additionalProperties", "propertyNames", "if", "then", "else", "not"):
                yield from subschemas(value)
            elif key == "allOf":
                for sub in value:
                    yield from subschemas(sub)


def test_schema_is_valid_2020_12_and_draft_07() -> None:
    """The schema passes the 2020-12 meta-schema, and also the draft-07 one that editors use."""
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert SCHEMA["$id"].endswith("/webhook.v1.json")
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.Draft7Validator.check_schema(SCHEMA)


def test_schema_uses_only_keywords_draft_07_also_has() -> None:
    """No keyword from the newer drafts appears anywhere in the schema."""
    used = {key for sub in subschemas(SCHEMA) for key in sub}
    assert used.isdisjoint(NEWER_KEYWORDS)


def test_every_property_has_a_description_and_every_object_is_closed() -> None:
    """Each property explains itself, and each object schema says what other properties it allows."""
    for sub in subschemas(SCHEMA):
        for name, prop in sub.get("properties", {}).items():
            if isinstance(prop, dict) and "type" in sub:  # if/then branches only narrow defined properties
                assert prop.get("description"), f"property {name!r} has no description"
        types = sub.get("type", [])
        if sub is SCHEMA:
            continue  # the root only dispatches on `kind` to the two closed document schemas
        if "object" in ([types] if isinstance(types, str) else types):
            assert "additionalProperties" in sub, f"object schema {sub.get('title')!r} is open"


def test_bundled_catalogue_is_a_valid_event_types_document() -> None:
    """The event catalogue follows the EventTypes shape and lists the documented OMS event types."""
    catalogue = json.loads(CATALOGUE_PATH.read_text(encoding="utf-8"))
    assert list(iter_schema_errors(catalogue)) == []
    names = load_catalogue()
    assert {"package.created", "package.status.shipped", "shipment.status.updated"} <= names
    assert {"transfer.status.in_transit", "stock_location.updated", "package.shipment.awb_number"} <= names
    assert all(entry["description"] for entry in catalogue["spec"]["event_types"])


# --- the fast path agrees with jsonschema -------------------------------------------------------------------


WRONG_VALUES: list[Any] = [None, True, -1, 2.5, 10**9, "", "x", "a\n", [], ["x"], {}, {"env": "A"}]


def sample_documents(*, invalid: bool = True) -> list[Any]:
    folders = [REPO / "webhooks.d", REPO / "tests/reconciler/fixtures/valid"]
    folders += [REPO / "tests/reconciler/fixtures/invalid"] if invalid else []
    docs: list[Any] = []
    for folder in folders:
        for path in sorted(folder.glob("*.yaml")):
            docs.extend(d.data for d in parse_source(path.read_text(encoding="utf-8"), path.name).documents)
    return docs


def mutations(doc: Any) -> Iterator[Any]:
    """The document with one value replaced by a wrong one, one key removed, or one key added."""
    for path, _value in iter_paths(doc):
        if not path:
            continue
        for wrong in WRONG_VALUES:
            changed = copy.deepcopy(doc)
            parent = changed
            for part in path[:-1]:
                parent = parent[part]
            parent[path[-1]] = copy.deepcopy(wrong)
            yield changed
            if isinstance(parent, dict):
                del parent[path[-1]]
                yield copy.deepcopy(changed)
                parent["unexpected"] = 1
                yield changed


def test_fast_validator_agrees_with_jsonschema_on_thousands_of_documents() -> None:
    """For every sample document and every one-step mutation of it, both validators give the same verdict."""
    checked = 0
    for doc in sample_documents(invalid=False):
        for candidate in [doc, *mutations(doc)]:
            expected = not any(True for _ in iter_schema_errors(candidate))
            assert is_valid(candidate) == expected, candidate
            checked += 1
    assert checked > 2000


def test_pattern_dollar_does_not_accept_a_trailing_newline() -> None:
    """Both validators read `$` as ECMA-262 does: 'erp\\n' is not a valid name (Python's `$` allows it)."""
    doc = {
        "apiVersion": "webhooks/v1",
        "kind": "Webhook",
        "metadata": {"name": "erp\n"},
        "spec": {"target_url": "https://a.example.com", "event_type": "a.b"},
    }
    assert not is_valid(doc)
    assert [e.validator for e in iter_schema_errors(doc)] == ["pattern"]


def test_fast_validator_refuses_keywords_it_does_not_implement() -> None:
    """A schema keyword outside the supported subset fails at compile time rather than being ignored."""
    with pytest.raises(SchemaError, match="oneOf"):
        FastValidator({"oneOf": [{"type": "string"}]})


def test_fast_validator_follows_recursive_references() -> None:
    """A schema that refers to itself compiles and validates nested data."""
    tree = {"type": "object", "properties": {"child": {"$ref": "#"}}, "additionalProperties": False}
    check = FastValidator(tree).is_valid
    assert check({"child": {"child": {}}})
    assert not check({"child": {"child": {"other": 1}}})


# --- messages -----------------------------------------------------------------------------------------------


def diagnostics(text: str, claimed: tuple[str, ...] = ()) -> list[tuple[int, int, str, str]]:
    (doc,) = parse_source(text, "f.yaml").documents
    return [(d.line, d.column, d.json_path, d.message) for d in check_schema(doc, "f.yaml", claimed)]


HEAD = "apiVersion: webhooks/v1\nkind: Webhook\nmetadata: {name: n}\nspec:\n  target_url: https://a.example.com\n"


def test_a_valid_document_has_no_schema_diagnostics() -> None:
    """A document that satisfies the schema yields nothing."""
    assert diagnostics(HEAD + "  event_type: a.b\n") == []


def test_secret_reference_shape_errors_explain_env_and_file() -> None:
    """A malformed secret reference says what a secret reference is, without quoting anything back."""
    both = diagnostics(HEAD + "  event_type: a.b\n  secret_key: {env: A, file: /b}\n")
    assert both == [
        (7, 15, "$.spec.secret_key", "secret_key must be a secret reference ({env: NAME} or {file: PATH}) "
         "with exactly one of the two"),
    ]  # fmt: skip
    wrong_key = diagnostics(HEAD + "  event_type: a.b\n  secret_key: {value: hunter2}\n")
    assert wrong_key == [
        (7, 16, "$.spec.secret_key.value", "unknown property in secret_key; a secret reference has exactly "
         "one of 'env' or 'file'"),
    ]  # fmt: skip


def test_claimed_paths_are_left_to_the_rule_that_claimed_them() -> None:
    """Schema errors at or under a path a rule already reported are not repeated."""
    text = HEAD + "  event_type: a.b\n  secret_key: hunter2\n  status: on\n"
    assert sorted(d[2] for d in diagnostics(text)) == ["$.spec.secret_key", "$.spec.status"]
    assert [d[2] for d in diagnostics(text, ("$.spec.secret_key",))] == ["$.spec.status"]


def test_number_where_text_is_expected_suggests_quoting() -> None:
    """A label written as a number is reported with the hint to quote it."""
    (only,) = diagnostics(HEAD.replace("{name: n}", "{name: n, labels: {tier: 1}}") + "  event_type: a.b\n")
    assert only[3] == "label 'tier' must be a string, got a number (quote the value to keep it as text)"


def test_enum_mistakes_get_a_did_you_mean() -> None:
    """A misspelt choice is quoted back with the closest allowed value."""
    text = HEAD + "  event_type: a.b\n  retry_countdown_config: {choice: exponental, kwargs: {base: 2}}\n"
    (only,) = diagnostics(text)
    assert "got 'exponental'; did you mean 'exponential'?" in only[3]


def secret_capable_paths(doc: dict[str, Any]) -> Iterator[tuple[Any, ...]]:
    for path, value in iter_paths(doc):
        quotable = path and path[-1] in ("name", "status", "choice", "type", "kind", "apiVersion")
        if isinstance(value, str) and path and not quotable and "event_type" not in path and "on" not in path:
            yield path


def test_messages_never_quote_values_that_may_be_secrets() -> None:
    """Whatever wrong value replaces a free-text field (URL, header, secret), no message repeats it."""
    leak = "s3cr3t-DO-NOT-LEAK"
    for doc in sample_documents():
        if not isinstance(doc, dict) or doc.get("kind") != "Webhook":
            continue
        for path in secret_capable_paths(doc):
            for wrong in (leak, f"{leak}\n", {"x": leak}, [leak], {leak: leak}):
                changed = copy.deepcopy(doc)
                parent = changed
                for part in path[:-1]:
                    parent = parent[part]
                parent[path[-1]] = wrong
                text = json.dumps(changed)  # JSON is YAML: reuse the real parser for positions
                (parsed,) = parse_source(text, "f.yaml").documents
                for d in check_schema(parsed, "f.yaml"):
                    assert leak not in d.message, (path, d.message)
