"""Parse YAML into plain JSON-like data plus the source position of every key and value.

PyYAML's ``compose_all`` keeps marks on nodes. The data is built from the node tree in one walk, and the tree
is kept with it: the position of any JSON path is found by following the path through the nodes, only for
the few paths a diagnostic needs. libyaml (``CSafeLoader``) does the parsing when available because it is many
times faster than the pure-Python parser.

Scalars are resolved with the YAML 1.2 core schema, as editors (yaml-language-server) and
check-jsonschema (ruamel.yaml) do: ``on``, ``yes`` and ``no`` stay strings, only ``true``/``false`` are
booleans, and timestamps stay strings. Mapping keys are always strings, taken from their source text
(``200:`` is the key ``"200"``).

Budgets (``reconciler.limits``): the walk counts the aliases it follows and the nodes they add (an alias
reuses the anchor's data, so the walk itself stays cheap, but every later reader of the data would expand
it), and the nesting depth; past a budget the file's remaining documents are not built and the problem is
one located diagnostic. Integers with too many digits are refused before conversion (Python refuses to
convert past 4,300 digits, and big ones are slow), integers outside 64 bits and floats that overflow to
infinity are refused after it (``number-range``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from reconciler.limits import DEFAULT_LIMITS, Limits
from reconciler.model import Diagnostic, Severity

PathElement = str | int
JsonPath = tuple[PathElement, ...]

_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BaseLoader):  # type: ignore[misc]
    """Composes without PyYAML's YAML 1.1 implicit typing: plain scalars are typed later, YAML 1.2 style.

    Typing plain scalars in the walk rather than in ``resolve`` also skips the work for mapping keys, which
    are always text in our format.
    """

    def resolve(self, kind: type[Node], value: Any, implicit: tuple[bool, bool]) -> str:
        if kind is ScalarNode:
            return _PLAIN if implicit[0] else _STR
        return _SEQ if kind is SequenceNode else _MAP

    # The composer calls these for every node, for path resolvers we never register. C builtins that accept
    # the same arguments and do nothing cost a fraction of the Python no-ops they replace.
    descend_resolver = staticmethod(slice)
    ascend_resolver = staticmethod(tuple)


_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL, _MAP, _SEQ = (
    _TAG + t for t in ("str", "int", "float", "bool", "null", "map", "seq")
)
_PLAIN = "!plain"  # an untagged plain scalar, typed by _resolve_plain
_MERGE = "<<"
_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_NULLS = {"~", "null", "Null", "NULL"}
_INT_RE = re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+")
_FLOAT_RE = re.compile(
    r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)"
)
_KEPT_AS_TEXT = {_TAG + "timestamp", _TAG + "binary"}  # safe and JSON-compatible as their source text
_MAPPING_TAGS = {_TAG + "map", _TAG + "omap", _TAG + "set"}
_SEQUENCE_TAGS = {_TAG + "seq", _TAG + "pairs"}
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def format_json_path(path: JsonPath) -> str:
    """Render a path as ``$.spec.additional_headers['X Y'][0]`` (dots for plain keys, brackets otherwise)."""
    out = ["$"]
    for element in path:
        if isinstance(element, int):
            out.append(f"[{element}]")
        elif _PLAIN_KEY.match(element):
            out.append(f".{element}")
        else:
            out.append("[" + repr(element) + "]")
    return "".join(out)


@dataclass(frozen=True)
class Document:
    """One YAML document: plain data, and its node tree to find where each part is written."""

    index: int
    data: Any
    root: Node = field(repr=False)
    diagnostics: tuple[Diagnostic, ...]  # problems found while building it (duplicate keys, tags)

    @property
    def line(self) -> int:
        """Where the document's content starts, 1-based."""
        return int(self.root.start_mark.line) + 1

    @property
    def column(self) -> int:
        return int(self.root.start_mark.column) + 1

    def key_position(self, path: JsonPath) -> tuple[int, int]:
        """Line and column (1-based) of the key (or list item) at ``path``; the document start for the root.

        A path that does not exist (a missing key) resolves to the closest existing parent.
        """
        return _position(_locate(self.root, path)[0])

    def value_position(self, path: JsonPath) -> tuple[int, int]:
        """Line and column (1-based) where the value at ``path`` starts (or its closest existing parent)."""
        return _position(_locate(self.root, path)[1])


def _position(node: Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _locate(root: Node, path: JsonPath) -> tuple[Node, Node]:
    # Positions are looked up only for the few paths a diagnostic needs, so nothing is recorded while building
    # the data: the path is followed through the node tree instead (the last of duplicate keys wins, as in
    # the data; keys brought in by a merge key are found in the merged mapping).
    key_node = node = root
    for part in path:
        found: tuple[Node, Node] | None = None
        if isinstance(node, MappingNode) and isinstance(part, str):
            found = _find_key(node, part)
        elif isinstance(node, SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            found = (node.value[part], node.value[part])
        if found is None:
            break
        key_node, node = found
    return key_node, node


def _find_key(node: MappingNode, key: str, depth: int = 0) -> tuple[Node, Node] | None:
    found: tuple[Node, Node] | None = None
    merged: list[Node] = []
    for key_node, value_node in node.value:
        if isinstance(key_node, ScalarNode):
            if key_node.tag == _PLAIN and key_node.value == _MERGE:
                merged.extend(value_node.value if isinstance(value_node, SequenceNode) else [value_node])
            elif key_node.value == key:
                found = (key_node, value_node)
    if found is None and depth < 10:  # merges nest; the bound guards against a merge cycle
        for source in merged:
            if isinstance(source, MappingNode):
                found = _find_key(source, key, depth + 1)
                if found is not None:
                    break
    return found


@dataclass(frozen=True)
class ParsedSource:
    """Every document of a file, and the problems that stopped parsing (a syntax error ends the stream)."""

    documents: tuple[Document, ...]
    diagnostics: tuple[Diagnostic, ...]


def decode_source(data: bytes, file: str) -> str | Diagnostic:
    """Decode UTF-8 (an optional BOM is dropped), or say where the first invalid byte is."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line, column = _offset_position(data, exc.start)
        return Diagnostic(
            Severity.ERROR,
            "encoding",
            "file is not valid UTF-8 (invalid byte sequence here)",
            file,
            line,
            column,
        )


def _offset_position(data: bytes, offset: int) -> tuple[int, int]:
    head = data[:offset]
    line_start = head.rfind(b"\n") + 1
    column = len(head[line_start:].decode("utf-8", errors="replace")) + 1
    return head.count(b"\n") + 1, column


def parse_source(text: str, file: str, limits: Limits = DEFAULT_LIMITS) -> ParsedSource:
    """Parse every document of ``text``; never raises for bad input (problems come back as diagnostics).

    Past a budget of ``limits`` the document at fault and the rest of the file are dropped, and the
    diagnostic is the file's.
    """
    documents: list[Document] = []
    problems: list[Diagnostic] = []
    budget = _Budget(limits)
    if len(text) > _SCAN_ABOVE_CHARS:
        crowded = _count_nodes(text, file, limits.max_nodes)
        if crowded is not None:
            return ParsedSource((), (crowded,))
    try:
        for index, root in enumerate(yaml.compose_all(text, Loader=_Loader)):
            documents.append(_Builder(file, index, budget).document(root))
    except _OverBudget as exc:
        problems.append(exc.diagnostic)
    except yaml.reader.ReaderError as exc:
        # libyaml reports a byte offset into the UTF-8 stream; the pure-Python reader a character offset.
        encoded = text.encode("utf-8")
        if _BaseLoader is yaml.SafeLoader:
            line, column = _offset_position(encoded, len(text[: exc.position].encode("utf-8")))
        else:
            line, column = _offset_position(encoded, exc.position)
        message = f"invalid character #x{exc.character:04x}: {exc.reason}"
        problems.append(Diagnostic(Severity.ERROR, "yaml-syntax", message, file, line, column))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        message = exc.problem or "invalid YAML"
        if exc.context:
            message = f"{message} ({exc.context}"
            if exc.context_mark is not None and exc.context_mark is not mark:
                message += f" started at line {exc.context_mark.line + 1}"
            message += ")"
        if _char_at(text, line, column) == "\t":
            message += "; a tab cannot indent YAML, use spaces"
        problems.append(Diagnostic(Severity.ERROR, "yaml-syntax", message, file, line, column))
    except yaml.YAMLError as exc:  # defensive: any other parser failure is still a diagnostic
        problems.append(Diagnostic(Severity.ERROR, "yaml-syntax", type(exc).__name__, file, 1, 1))
    return ParsedSource(tuple(documents), tuple(problems))


def _char_at(text: str, line: int, column: int) -> str:
    lines = text.split("\n", line)
    return lines[line - 1][column - 1 : column] if line <= len(lines) else ""


# A file this long may hold more nodes than the budget; its events are counted before any node is made (the
# composed nodes of a 1 MiB list of numbers take about 150 MB). Smaller files cannot hold too many.
_SCAN_ABOVE_CHARS = 64 * 1024
_NODE_EVENTS = (yaml.ScalarEvent, yaml.MappingStartEvent, yaml.SequenceStartEvent, yaml.AliasEvent)


def _count_nodes(text: str, file: str, most: int) -> Diagnostic | None:
    """A ``yaml-node-budget`` diagnostic at the first node past ``most``, counted from the parser's events;
    None when there are not that many (a syntax error ends the count: composing reports it)."""
    count = 0
    try:
        for event in yaml.parse(text, Loader=_Loader):
            if isinstance(event, _NODE_EVENTS):
                count += 1
                if count > most:
                    mark = event.start_mark
                    line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
                    message = f"more than {most} YAML nodes in one file"
                    return Diagnostic(Severity.ERROR, "yaml-node-budget", message, file, line, column)
    except yaml.YAMLError:
        return None
    return None


class _Budget:
    """What a file's documents have spent so far of the alias budgets in ``limits``."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.aliases = 0
        self.alias_nodes = 0
        self.nodes = 0  # entries of every mapping and sequence built (a node's size is what it adds here)


class _OverBudget(Exception):
    """Raised inside the walk when a budget is spent; carries the diagnostic (never escapes the module)."""

    def __init__(self, diagnostic: Diagnostic) -> None:
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


class _NumberRange(ValueError):
    """A number literal outside what we accept; the message says why (caught by the walk)."""


class _Builder:
    """Builds one document's data from its node tree."""

    def __init__(self, file: str, index: int, budget: _Budget | None = None) -> None:
        self.file = file
        self.index = index
        self.budget = budget if budget is not None else _Budget(DEFAULT_LIMITS)
        self.problems: list[Diagnostic] = []
        self.built: dict[int, Any] = {}  # id(node) -> data: an alias reuses the anchor's data
        # id(node) -> (nodes its data holds with aliases expanded, levels of nesting below it)
        self.sizes: dict[int, tuple[int, int]] = {}
        self.reached = 0  # the deepest nesting reached so far in the node being built
        self.building: set[int] = set()

    def document(self, root: Node) -> Document:
        data = self.build(root, ())
        return Document(self.index, data, root, tuple(self.problems))

    def problem(self, rule: str, message: str, node: Node, path: JsonPath) -> None:
        self.problems.append(self.diagnostic(rule, message, node, path))

    def diagnostic(self, rule: str, message: str, node: Node, path: JsonPath) -> Diagnostic:
        line, column = node.start_mark.line + 1, node.start_mark.column + 1
        return Diagnostic(Severity.ERROR, rule, message, self.file, line, column, format_json_path(path))

    def build(self, node: Node, path: JsonPath, at: Node | None = None) -> Any:
        """The data of ``node`` at ``path``; ``at``: where an alias at this place is written (the key of a
        mapping value, the list of an item), since the composer hands over the anchored node itself."""
        if isinstance(node, ScalarNode):
            return self.scalar(node, path)
        key = id(node)
        if key in self.built:
            self.reuse(key, node, path, at or node)
            return self.built[key]
        if key in self.building:
            self.problem("yaml-syntax", "recursive alias (a node that contains itself)", node, path)
            return None
        depth = len(path)
        if depth >= self.budget.limits.max_depth:
            raise _OverBudget(self.too_deep(node, path))
        before, outer = self.budget.nodes, self.reached
        self.reached = depth
        self.building.add(key)
        try:
            if isinstance(node, MappingNode):
                if node.tag not in _MAPPING_TAGS:
                    self.problem("yaml-tag", f"unsupported tag {node.tag}", node, path)
                data: Any = self.mapping(node, path)
            elif isinstance(node, SequenceNode):
                if node.tag not in _SEQUENCE_TAGS:
                    self.problem("yaml-tag", f"unsupported tag {node.tag}", node, path)
                data = self.sequence(node, path)
            else:  # pragma: no cover - the composer only makes the three node kinds
                data = None
        finally:
            self.building.discard(key)
        self.built[key] = data
        self.sizes[key] = (self.budget.nodes - before, self.reached - depth)
        self.reached = max(outer, self.reached)
        return data

    def too_deep(self, where: Node, path: JsonPath) -> Diagnostic:
        limits = self.budget.limits
        message = f"nesting deeper than {limits.max_depth} levels of mappings and lists"
        return self.diagnostic("yaml-depth", message, where, path)

    def reuse(self, key: int, node: Node, path: JsonPath, where: Node) -> None:
        """Count one alias: its nodes against the file's budgets, its nesting against the depth limit."""
        size, height = self.sizes[key]
        budget, limits = self.budget, self.budget.limits
        deepest = len(path) + height
        if deepest >= limits.max_depth:
            raise _OverBudget(self.too_deep(where, path))
        self.reached = max(self.reached, deepest)
        budget.aliases += 1
        budget.alias_nodes += size
        budget.nodes += size
        anchor = f"the anchor at line {node.start_mark.line + 1}"
        if budget.aliases > limits.max_aliases:
            message = f"more than {limits.max_aliases} aliases in one file (this one repeats {anchor})"
        elif budget.alias_nodes > limits.max_alias_nodes:
            message = (
                f"aliases expand to more than {limits.max_alias_nodes} nodes in one file (this one repeats "
                f"{anchor}; a YAML alias bomb?)"
            )
        else:
            self.spend_nodes(0, where, path)
            return
        raise _OverBudget(self.diagnostic("yaml-alias-budget", message, where, path))

    def spend_nodes(self, count: int, where: Node, path: JsonPath) -> None:
        """Count ``count`` more nodes of the file; past ``max_nodes``, stop building it."""
        budget = self.budget
        budget.nodes += count
        if budget.nodes > budget.limits.max_nodes:
            message = f"more than {budget.limits.max_nodes} YAML nodes in one file (aliases expanded)"
            raise _OverBudget(self.diagnostic("yaml-node-budget", message, where, path))

    def scalar(self, node: ScalarNode, path: JsonPath) -> Any:
        tag, value = node.tag, node.value
        if tag == _PLAIN:
            try:
                data = _resolve_plain(value)
            except _NumberRange as exc:
                return self.out_of_range(exc, node, path)
            return self.finite(data, node, path) if isinstance(data, float) else data
        if tag == _STR:
            return value
        try:
            if tag == _NULL:
                return None
            if tag == _BOOL:
                return _BOOLS[value]
            if tag == _INT:
                return _to_int(value)
            if tag == _FLOAT:
                return self.finite(_to_float(value), node, path)
        except _NumberRange as exc:
            return self.out_of_range(exc, node, path)
        except (KeyError, ValueError):
            tag_name = tag.replace(_TAG, "!!")
            self.problem("yaml-tag", f"the value cannot be read as {tag_name}", node, path)
            return value
        if tag not in _KEPT_AS_TEXT:
            self.problem("yaml-tag", f"unsupported tag {tag.replace(_TAG, '!!')}", node, path)
        return value

    def out_of_range(self, exc: _NumberRange, node: ScalarNode, path: JsonPath) -> str:
        self.problem("number-range", str(exc), node, path)
        return str(node.value)[:20]  # the document is refused; a short stand-in keeps later messages short

    def finite(self, number: float, node: ScalarNode, path: JsonPath) -> float:
        # JSON has no infinity or NaN, and NaN slips through every minimum/maximum check.
        if math.isinf(number) and not node.value.lower().endswith("inf"):
            self.problem("number-range", "number too large (it overflows a 64-bit float)", node, path)
        elif math.isinf(number) or math.isnan(number):
            self.problem(
                "invalid-number", "numbers must be finite (.inf and .nan are not allowed)", node, path
            )
        return number

    def sequence(self, node: SequenceNode, path: JsonPath) -> list[Any]:
        self.spend_nodes(len(node.value), node, path)
        return [self.build(item, (*path, i), node) for i, item in enumerate(node.value)]

    def mapping(self, node: MappingNode, path: JsonPath) -> dict[str, Any]:
        self.spend_nodes(len(node.value), node, path)
        result: dict[str, Any] = {}
        explicit: dict[str, Node] = {}  # key -> its first key node
        for key_node, value_node in node.value:
            key = key_node.value
            if key_node.tag is _PLAIN and key == _MERGE:
                self.merge(key_node, value_node, path, result, explicit)
                continue
            if key_node.__class__ is not ScalarNode:
                self.problem(
                    "yaml-syntax", "mapping keys must be plain text, not lists or mappings", key_node, path
                )
                continue
            # Keys are always strings in our format: take the source text, so `on:` and `200:` stay text.
            first = explicit.setdefault(key, key_node)
            if first is not key_node:
                line = _position(first)[0]
                message = f"duplicate key {key!r} (first defined at line {line}); only one may be given"
                self.problem("duplicate-key", message, key_node, (*path, key))
            # The common scalars inline (this loop runs for every key of every file); the rest via build().
            tag = value_node.tag
            if tag is _STR and value_node.__class__ is ScalarNode:
                result[key] = value_node.value
            elif tag is _PLAIN and value_node.__class__ is ScalarNode:
                try:
                    data = _resolve_plain(value_node.value)
                except _NumberRange as exc:
                    result[key] = self.out_of_range(exc, value_node, (*path, key))
                    continue
                result[key] = self.finite(data, value_node, (*path, key)) if data.__class__ is float else data
            else:
                result[key] = self.build(value_node, (*path, key), key_node)
        return result

    def merge(
        self,
        key_node: Node,
        value_node: Node,
        path: JsonPath,
        result: dict[str, Any],
        explicit: dict[str, Node],
    ) -> None:
        # `<<: *base` or `<<: [*a, *b]`: keys written in this mapping win, then earlier merged mappings.
        sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
        for source in sources:
            if not isinstance(source, MappingNode):
                self.problem(
                    "yaml-syntax", "a merge key ('<<') needs a mapping or a list of mappings", source, path
                )
                continue
            merged = self.build(source, path, key_node)
            for key, value in merged.items():
                if key not in explicit and key not in result:
                    result[key] = value


def _resolve_plain(text: str) -> Any:
    """Type an untagged plain scalar by the YAML 1.2 core schema."""
    if not text:
        return None
    first = text[0]
    if first in "tTfF":
        return _BOOLS.get(text, text)
    if first in "nN~":
        return None if text in _NULLS else text
    if first in "-+0123456789.":
        if _INT_RE.fullmatch(text):
            return _to_int(text)
        if _FLOAT_RE.fullmatch(text):
            return _to_float(text)
    return text


#: Integers are 64-bit; a literal longer than any 64-bit one (octal, with sign and prefix) is refused unread.
_INT_BOUND = 2**63
_INT_MAX_CHARS = 25


def _to_int(text: str) -> int:
    """The integer a literal stands for; _NumberRange when it is outside the 64-bit range."""
    if len(text.lstrip("+-").removeprefix("0o").removeprefix("0x").lstrip("0")) > _INT_MAX_CHARS:
        raise _NumberRange(f"integer literal of {len(text)} characters, outside the 64-bit range")
    if text.startswith("0o"):
        number = int(text[2:], 8)
    elif text.startswith("0x"):
        number = int(text[2:], 16)
    else:
        number = int(text)
    if not -_INT_BOUND <= number < _INT_BOUND:
        raise _NumberRange("integer outside the 64-bit range (-2**63 to 2**63 - 1)")
    return number


def _to_float(text: str) -> float:
    lowered = text.lower()
    if lowered.endswith(".inf"):
        return float("-inf") if lowered.startswith("-") else float("inf")
    if lowered == ".nan":
        return float("nan")
    return float(text)


def iter_paths(data: Any, path: JsonPath = ()) -> Iterator[tuple[JsonPath, Any]]:
    """Every (path, value) pair of plain data, depth first, the root included."""
    yield path, data
    if isinstance(data, dict):
        for key, value in data.items():
            yield from iter_paths(value, (*path, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from iter_paths(value, (*path, i))
