"""The bundled JSON Schema, and its errors as positioned, secret-free diagnostics.

Messages are written here from the failing keyword and the schema, never taken from ``jsonschema``'s text:
those echo the instance (``'hunter2' is not of type 'object'``), and a value in a webhook file may be a secret
pasted by mistake. A value is quoted back only where it cannot be one (names, enums, event types, numbers of
the retry settings).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Collection, Iterator
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.errors import SchemaError
from reconciler.fastschema import FastValidator, ecma_search
from reconciler.model import Diagnostic, Severity
from reconciler.rules import did_you_mean
from reconciler.yamlsource import Document, JsonPath, format_json_path

if TYPE_CHECKING:
    from jsonschema.exceptions import ValidationError


def find_schema_dir() -> Traversable:
    """Where the bundled schemas are: package data of an installed wheel, else the checkout's ``schemas/``.

    The top-level ``schemas/`` folder is the only copy in the repository (editors find it through the
    modeline of every webhook file); the build maps it into the wheel as ``reconciler/schemas/``. An editable
    install has no such package folder, so the checkout's folder is read directly.
    """
    packaged = resources.files("reconciler") / "schemas"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "schemas"


SCHEMA_DIR = find_schema_dir()
WEBHOOK_SCHEMA_PATH = SCHEMA_DIR / "webhook.v1.json"
CATALOGUE_PATH = SCHEMA_DIR / "events.v1.json"

# Values under these keys may be secrets: never quoted back.
_SECRET_CONTAINERS = frozenset({"secret_key", "additional_headers", "password", "username"})
# Leaves whose values are safe and useful to quote back (outside secret containers).
_QUOTABLE = frozenset(
    {
        "apiVersion",
        "kind",
        "name",
        "status",
        "choice",
        "type",
        "on",
        "event_type",
        "timeout",
        "max_attempts",
        "jitter",
    }
    | {"seconds", "base", "factor", "limit", "min_value", "max_value", "delays", "event_types"}
)
_TYPE_WORDS = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "number": "a number",
    "integer": "a whole number",
    "boolean": "a boolean (true/false)",
    "null": "null",
}
_SECRET_REF = "a secret reference ({env: NAME} or {file: PATH})"


def load_json(path: Traversable) -> Any:
    """Read one bundled JSON file; a missing or malformed one is an installation problem."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SchemaError(f"cannot read bundled {path.name}: {exc}") from exc


@functools.cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


@functools.cache
def load_schema() -> dict[str, Any]:
    """The bundled ``webhook.v1.json`` (read once)."""
    schema = load_json(WEBHOOK_SCHEMA_PATH)
    if not isinstance(schema, dict):
        raise SchemaError(f"bundled {WEBHOOK_SCHEMA_PATH.name} is not a JSON object")
    return schema


@functools.cache
def _fast() -> Callable[[Any], bool]:
    return FastValidator(load_schema()).is_valid


@functools.cache
def _full() -> Any:
    # jsonschema takes ~150 ms to import and is needed only for documents that are not valid.
    import jsonschema
    from jsonschema.exceptions import ValidationError

    def ecma_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
        # The fast path and jsonschema must agree: both use ECMA-262's `$` (no match before a final "\n").
        if validator.is_type(instance, "string") and not ecma_search(_compiled(pattern), instance):
            yield ValidationError(f"does not match {pattern!r}")

    validator_class = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": ecma_pattern})
    return validator_class(load_schema())


def is_valid(data: Any) -> bool:
    """Whether a document satisfies the schema (fast path, no messages)."""
    return _fast()(data)


def iter_schema_errors(data: Any) -> Iterator[ValidationError]:
    """``jsonschema``'s own errors for a document (the authority; slow)."""
    return iter(_full().iter_errors(data))


def check_schema(doc: Document, file: str, claimed: Collection[str] = ()) -> list[Diagnostic]:
    """Schema diagnostics of one document, except at or under a path in ``claimed`` (a rule reported it)."""
    if is_valid(doc.data):
        return []
    out: list[Diagnostic] = []
    seen: set[tuple[str, int, int, str]] = set()
    for error in iter_schema_errors(doc.data):
        for path, at_key, message in _explain(doc.data, error):
            json_path = format_json_path(path)
            if any(_under(json_path, c) for c in claimed):
                continue
            line, column = doc.key_position(path) if at_key else doc.value_position(path)
            if (json_path, line, column, message) in seen:
                continue
            seen.add((json_path, line, column, message))
            out.append(Diagnostic(Severity.ERROR, "schema", message, file, line, column, json_path))
    return out


def _under(path: str, parent: str) -> bool:
    return path == parent or (path.startswith(parent) and path[len(parent)] in ".[")


def _explain(root: Any, error: ValidationError) -> Iterator[tuple[JsonPath, bool, str]]:
    """(path, whether to point at the key, message) for one error; some errors name several places."""
    path: JsonPath = tuple(error.absolute_path)
    keyword, expected, schema, instance = error.validator, error.validator_value, error.schema, error.instance
    if "propertyNames" in error.relative_schema_path:
        if keyword == "enum":  # the keys a retry choice or an auth type takes (see the if/then in the schema)
            allowed = ", ".join(expected)
            message = f"{_show(instance)} is not used{_branch(root, path) or ' here'} (it takes: {allowed})"
        else:
            message = _key_message(path, instance, keyword, expected, schema)
        yield (*path, instance), True, message
    elif keyword == "required":
        for name in list(expected):
            if isinstance(instance, dict) and name not in instance:
                yield path, False, f"{name!r} is a required property{_branch(root, path)}"
    elif keyword == "additionalProperties" and expected is False:
        known: list[str] = list(schema.get("properties", {}))
        for key in instance:
            if key not in known:
                yield (*path, key), True, _unknown_property(path, key, known)
    elif keyword is None:  # a `false` subschema (jsonschema leaves the property out of the path)
        yield path, False, f"{_subject(path)} contains a property that is not allowed here"
    else:
        yield path, False, _value_message(path, keyword, expected, schema, instance)


def _subject(path: JsonPath) -> str:
    """How a message names the value at ``path``: ``timeout``, ``event_type[1]``, ``header 'X-Source'``."""
    if not path:
        return "the document"
    if len(path) >= 2 and isinstance(path[-1], str):
        prefix = {
            "additional_headers": "header",
            "labels": "label",
            "match": "match key",
            "scope": "scope key",
        }.get(str(path[-2]))
        if prefix:
            return f"{prefix} {path[-1]!r}"
    i = len(path)
    while i > 0 and isinstance(path[i - 1], int):
        i -= 1
    head = str(path[i - 1]) if i > 0 else "item"
    return head + "".join(f"[{p}]" for p in path[i:])


def _quotable(path: JsonPath) -> bool:
    keys = [p for p in path if isinstance(p, str)]
    return bool(keys) and not _SECRET_CONTAINERS.intersection(keys) and keys[-1] in _QUOTABLE


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    for name, python in (("a mapping", dict), ("a list", list), ("a string", str), ("a number", int | float)):
        if isinstance(value, python):
            return name
    return "empty (null)"


def _data_at(root: Any, path: JsonPath) -> Any:
    node = root
    for part in path:
        if isinstance(node, dict) and isinstance(part, str):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            return None
    return node


def _branch(root: Any, path: JsonPath) -> str:
    # Conditional rules hang on `choice` (retry) or `type` (auth): name it so the message explains itself.
    node = _data_at(root, path)
    if path and path[-1] == "kwargs":
        parent = _data_at(root, path[:-1])
        if isinstance(parent, dict) and isinstance(parent.get("choice"), str):
            return f" for choice {parent['choice']!r}"
    if isinstance(node, dict) and path and path[-1] == "auth" and isinstance(node.get("type"), str):
        return f" for auth type {node['type']!r}"
    return ""


def _unknown_property(path: JsonPath, key: str, allowed: list[str]) -> str:
    where = f" in {_subject(path)}" if path else ""
    if set(allowed) == {"env", "file"}:  # inside a secret reference even a key may be a pasted secret
        return f"unknown property{where}; a secret reference has exactly one of 'env' or 'file'"
    best = did_you_mean(key, allowed)
    hint = f"; did you mean {best!r}?" if best else f" (allowed: {', '.join(allowed)})"
    return f"unknown property {_show(key)}{where}{hint}"


def _key_message(path: JsonPath, key: Any, keyword: str | None, expected: Any, schema: Any) -> str:
    # A header name may be a pasted "Authorization: Bearer ..." line: named by its position only.
    secret = bool(_SECRET_CONTAINERS.intersection(p for p in path if isinstance(p, str)))
    subject = "this header name" if secret else _subject((*path, key)) if path else "key"
    if keyword == "pattern":
        return f"{subject} {schema.get('patternErrorMessage', 'does not match ' + str(expected))}"
    if keyword == "minLength":
        return f"{_subject(path)}: keys must not be empty"
    if keyword == "maxLength":
        return f"{subject} is too long (at most {expected} characters)"
    return f"{subject} is not a valid key"


def _value_message(path: JsonPath, keyword: str, expected: Any, schema: Any, instance: Any) -> str:
    subject, quotable = _subject(path), _quotable(path)
    got = f", got {_show(instance)}" if quotable else ""
    if keyword == "type":
        hint = _quote_hint(expected, instance)
        return f"{subject} must be {_expected_type(expected, schema)}, got {_type_name(instance)}{hint}"
    if keyword == "enum":
        options = ", ".join(map(repr, expected))
        best = did_you_mean(instance, map(str, expected)) if quotable and isinstance(instance, str) else None
        return f"{subject} must be one of {options}{got}" + (f"; did you mean {best!r}?" if best else "")
    if keyword == "const":
        return f"{subject} must be {expected!r}{got}"
    if keyword == "pattern":
        explained = schema.get("patternErrorMessage", f"must match the pattern {expected}")
        return f"{subject} {_show(instance)} {explained}" if quotable else f"{subject} {explained}"
    if keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        bound = {"minimum": "at least", "maximum": "at most", "exclusiveMinimum": "greater than"}.get(
            keyword, "less than"
        )
        return f"{subject} must be {bound} {expected:g}{got}"
    if keyword in ("minLength", "minItems"):
        unit = "characters" if keyword == "minLength" else "items"
        return (
            f"{subject} must not be empty" if expected == 1 else f"{subject} needs at least {expected} {unit}"
        )
    if keyword == "maxLength":
        return f"{subject} must be at most {expected} characters long"
    if keyword == "maxItems":
        return f"{subject} must have at most {expected} items"
    if keyword == "uniqueItems":
        return f"{subject} must not list the same value twice"
    if keyword in ("minProperties", "maxProperties"):
        if "env" in schema.get("properties", {}):
            return f"{subject} must be {_SECRET_REF} with exactly one of the two"
        bound = "at least" if keyword == "minProperties" else "at most"
        return f"{subject} must have {bound} {expected} entries"
    return f"{subject} is not valid ({keyword})"


def _expected_type(expected: str | list[str], schema: Any) -> str:
    types = [expected] if isinstance(expected, str) else list(expected)
    words = [
        _SECRET_REF if t == "object" and "env" in schema.get("properties", {}) else _TYPE_WORDS[t]
        for t in types
    ]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _quote_hint(expected: str | list[str], instance: Any) -> str:
    if "string" in expected and isinstance(instance, bool | int | float):
        return " (quote the value to keep it as text)"
    return ""


@functools.cache
def load_catalogue() -> frozenset[str]:
    """Event type names of the bundled catalogue (``schemas/events.v1.json``)."""
    document = load_json(CATALOGUE_PATH)
    if not is_valid(document) or document.get("kind") != "EventTypes":
        raise SchemaError(f"bundled {CATALOGUE_PATH.name} is not a valid EventTypes document")
    return frozenset(entry["name"] for entry in document["spec"]["event_types"])
