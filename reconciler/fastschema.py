"""A validity-only compiler for the JSON Schema keywords our schemas use.

``jsonschema`` needs about a millisecond per webhook document, which alone would make checking 10,000 files
slower than the performance target allows. Almost every document in a real tree is valid, so the loader first
asks this compiled predicate "is it valid?" (a few microseconds) and runs ``jsonschema`` only on documents
that are not, to get its errors. ``jsonschema`` stays the authority for every message; the tests compare the
two on thousands of documents.

The schema is translated into the source of plain Python functions (one per ``$ref`` target and per
``if``), the way ``fastjsonschema`` does, so that validating is straight-line code instead of a tree of calls.
Instances are plain JSON data as the YAML reader builds them (``dict``, ``list``, ``str``, numbers, ``bool``,
``None``). Any keyword outside the supported subset raises ``SchemaError`` at compile time, so a schema change
that needs more keywords fails loudly instead of being checked wrongly.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from reconciler.errors import SchemaError

Check = Callable[[Any], bool]

# Keywords that never affect validity (format is an annotation for jsonschema's default validator too).
_ANNOTATIONS = frozenset(
    {"$schema", "$id", "$comment", "title", "description", "default", "examples", "format", "definitions"}
    | {"patternErrorMessage", "errorMessage", "markdownDescription", "then", "else"}
)
_TYPE_TESTS = {
    "object": "type({v}) is dict",
    "array": "type({v}) is list",
    "string": "type({v}) is str",
    "number": "type({v}) in _NUMBER",
    "integer": "(type({v}) is int or (type({v}) is float and {v}.is_integer()))",
    "boolean": "type({v}) is bool",
    "null": "{v} is None",
}
_GUARDS = {  # the instance type each keyword applies to; other types pass it
    "pattern": "string", "minLength": "string", "maxLength": "string",
    "minimum": "number", "maximum": "number", "exclusiveMinimum": "number", "exclusiveMaximum": "number",
    "minItems": "array", "maxItems": "array", "uniqueItems": "array", "items": "array",
    "required": "object", "properties": "object", "additionalProperties": "object", "propertyNames": "object",
    "minProperties": "object", "maxProperties": "object",
}  # fmt: skip
# Written as "not (violation)" like jsonschema, so NaN passes as it does there (the reader rejects it anyway).
_BOUNDS = {"minimum": "<", "maximum": ">", "exclusiveMinimum": "<=", "exclusiveMaximum": ">="}


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values: ``true`` is not ``1``, ``1`` is ``1.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if type(a) in (int, float) and type(b) in (int, float):
        return bool(a == b)
    return type(a) is type(b) and bool(a == b)


def ecma_search(pattern: re.Pattern[str], text: str) -> bool:
    """``pattern`` searched with ECMA-262's ``$``: Python's also matches before a final newline."""
    match = pattern.search(text)
    if match is None:
        return False
    return not pattern.pattern.endswith("$") or match.end() == len(text)


def _unique(items: list[Any]) -> bool:
    return not any(json_equal(a, b) for i, a in enumerate(items) for b in items[i + 1 :])


class FastValidator:
    """Compiles a schema (with local ``#/...`` references) into one predicate, ``is_valid``."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self._root = schema
        self._lines: list[str] = []
        self._constants: dict[str, Any] = {"_NUMBER": (int, float), "_ecma": ecma_search, "_unique": _unique}
        self._constants["_equal"] = json_equal
        self._functions: dict[str, str] = {}  # "$ref" -> function name
        self._count = 0
        entry = self._function(schema)
        namespace = dict(self._constants)
        exec(compile("\n".join(self._lines), "<fastschema>", "exec"), namespace)  # our own generated code
        self.source = "\n".join(self._lines)
        self.is_valid: Check = namespace[entry]

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def _constant(self, value: Any) -> str:
        name = self._name("_c")
        self._constants[name] = value
        return name

    def _function(self, schema: Any) -> str:
        """Emit ``def f(v): ...`` for ``schema`` and return its name."""
        name = self._name("_f")
        body: list[str] = []
        self._emit(schema, "v", 1, body)
        self._lines += [f"def {name}(v):", *body, "    return True", ""]
        return name

    def _ref(self, ref: str) -> str:
        if ref != "#" and not ref.startswith("#/"):
            raise SchemaError(f"only local references are supported, not {ref!r}")
        if ref not in self._functions:
            target: Any = self._root
            for part in ref[2:].split("/") if ref != "#" else ():
                target = target[part.replace("~1", "/").replace("~0", "~")]
            self._functions[ref] = name = self._name("_f")  # named first: a recursive reference calls it
            body: list[str] = []
            self._emit(target, "v", 1, body)
            self._lines += [f"def {name}(v):", *body, "    return True", ""]
        return self._functions[ref]

    def _emit(self, schema: Any, v: str, depth: int, out: list[str]) -> None:
        """Append statements that ``return False`` when ``v`` does not satisfy ``schema``."""
        pad = "    " * depth
        if schema is True:
            return
        if schema is False or not isinstance(schema, Mapping):
            if schema is not False:
                raise SchemaError(f"not a schema: {schema!r}")
            out.append(f"{pad}return False")
            return
        unknown = set(schema) - _ANNOTATIONS - set(_GUARDS) - {"type", "enum", "const", "$ref", "allOf", "if"}
        if unknown:
            raise SchemaError(f"keyword {sorted(unknown)[0]!r} is not supported by the fast validator")
        if "type" in schema:
            names = [schema["type"]] if isinstance(schema["type"], str) else schema["type"]
            test = " or ".join(_TYPE_TESTS[t].format(v=v) for t in names)
            out.append(f"{pad}if not ({test}): return False")
        if "enum" in schema:
            options = schema["enum"]
            if all(isinstance(o, str) for o in options):
                out.append(f"{pad}if not (type({v}) is str and {v} in {self._constant(frozenset(options))}):")
            else:
                out.append(f"{pad}if not any(_equal({v}, o) for o in {self._constant(options)}):")
            out.append(f"{pad}    return False")
        if "const" in schema:
            const = schema["const"]
            if isinstance(const, str):
                out.append(f"{pad}if not (type({v}) is str and {v} == {const!r}): return False")
            else:
                out.append(f"{pad}if not _equal({v}, {self._constant(const)}): return False")
        if "$ref" in schema:
            out.append(f"{pad}if not {self._ref(schema['$ref'])}({v}): return False")
        for sub in schema.get("allOf", ()):
            self._emit(sub, v, depth, out)
        if "if" in schema:
            condition = self._function(schema["if"])
            then, otherwise = schema.get("then", True), schema.get("else", True)
            out.append(f"{pad}if {condition}({v}):")
            self._emit(then, v, depth + 1, out)
            out.append(f"{pad}    pass")
            out.append(f"{pad}else:")
            self._emit(otherwise, v, depth + 1, out)
            out.append(f"{pad}    pass")
        for kind in ("string", "number", "array", "object"):
            keywords = [k for k in schema if _GUARDS.get(k) == kind]
            if keywords:
                out.append(f"{pad}if {_TYPE_TESTS[kind].format(v=v)}:")
                for keyword in keywords:
                    self._keyword(keyword, schema, v, depth + 1, out)

    def _keyword(self, keyword: str, schema: Mapping[str, Any], v: str, depth: int, out: list[str]) -> None:
        pad, value = "    " * depth, schema[keyword]
        if keyword == "pattern":
            out.append(f"{pad}if not _ecma({self._constant(re.compile(value))}, {v}): return False")
        elif keyword in ("minLength", "minItems", "minProperties"):
            out.append(f"{pad}if len({v}) < {int(value)}: return False")
        elif keyword in ("maxLength", "maxItems", "maxProperties"):
            out.append(f"{pad}if len({v}) > {int(value)}: return False")
        elif keyword in _BOUNDS:
            out.append(f"{pad}if {v} {_BOUNDS[keyword]} {float(value)!r}: return False")
        elif keyword == "uniqueItems":
            out.append(f"{pad}if {bool(value)} and not _unique({v}): return False")
        elif keyword == "items":
            item = self._name("x")
            out.append(f"{pad}for {item} in {v}:")
            self._emit(value, item, depth + 1, out)
            out.append(f"{pad}    pass")
        elif keyword == "required":
            out.append(f"{pad}if not {self._constant(frozenset(value))}.issubset({v}): return False")
        elif keyword == "properties":
            for name, sub in value.items():
                child = self._name("p")
                out.append(f"{pad}{child} = {v}.get({name!r}, _c0)")
                out.append(f"{pad}if {child} is not _c0:")
                self._emit(sub, child, depth + 1, out)
                out.append(f"{pad}    pass")
            self._constants["_c0"] = _MISSING
        elif keyword == "additionalProperties":
            known = self._constant(frozenset(schema.get("properties", ())))
            if value is False:
                out.append(f"{pad}if not {known}.issuperset({v}): return False")
            else:
                key, child = self._name("k"), self._name("p")
                out.append(f"{pad}for {key}, {child} in {v}.items():")
                out.append(f"{pad}    if {key} not in {known}:")
                self._emit(value, child, depth + 2, out)
                out.append(f"{pad}        pass")
        elif keyword == "propertyNames":
            key = self._name("k")
            out.append(f"{pad}for {key} in {v}:")
            self._emit(value, key, depth + 1, out)
            out.append(f"{pad}    pass")


_MISSING = object()
