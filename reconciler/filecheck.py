"""One file on its own: read, parse, check every document, and turn the valid ones into values.

Checking and building are two steps with a plain record between them (``FileRecord``: tuples, strings and
the documents' plain data). The loader may run the first step in worker processes for a large cold load; the
record crosses the process boundary cheaply, and the value objects are built once, in the loading process.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from reconciler.limits import DEFAULT_LIMITS, Limits
from reconciler.model import (
    KIND,
    BasicAuth,
    Callback,
    Diagnostic,
    RetryConfig,
    SecretRef,
    Severity,
    Source,
    TokenAuth,
    Webhook,
)
from reconciler.routing import pattern_matches
from reconciler.rules import (
    CLAIMING_RULES,
    EVENT_TYPES_KIND,
    NameSite,
    PatternSite,
    check_envelope,
    check_webhook,
)
from reconciler.schema import check_schema, load_catalogue
from reconciler.yamlsource import Document, JsonPath, decode_source, format_json_path, parse_source


@dataclass(frozen=True, slots=True)
class FileResult:
    path: str  # as displayed in diagnostics (relative to cwd when under it, else as given)
    digest: str  # sha256 hex of the file bytes
    webhooks: tuple[Webhook, ...]
    event_types: tuple[str, ...]  # extra catalogue entries from EventTypes documents
    diagnostics: tuple[Diagnostic, ...]  # per-file problems only


@dataclass(frozen=True, slots=True)
class LoadedFile:
    """A file's result plus what the tree-level rules need from it (kept in the loader's per-file cache)."""

    result: FileResult
    names: tuple[NameSite, ...]
    patterns: tuple[PatternSite, ...]


class FileRecord(NamedTuple):
    """What checking one file found, as plain data (see the module docstring)."""

    path: str
    digest: str
    diagnostics: tuple[Diagnostic, ...]
    names: tuple[tuple[str, str, int, int], ...]  # (kind, name, line, column) of each metadata.name
    patterns: tuple[PatternSite, ...]  # event types to check against the tree's catalogue
    webhooks: tuple[tuple[dict[str, Any], int, int], ...]  # (valid document, its line, its index)
    event_types: tuple[str, ...]


def load_file(path: Path, display: str, limits: Limits = DEFAULT_LIMITS) -> LoadedFile:
    """Read one file and check it on its own (no cross-file rules)."""
    return build_loaded(read_and_check(str(path), display, limits))


def build_file(data: bytes, display: str, limits: Limits = DEFAULT_LIMITS) -> LoadedFile:
    """Check one file's bytes on their own (no cross-file rules)."""
    return build_loaded(check_file(data, display, limits))


def read_and_check(path: str, display: str, limits: Limits = DEFAULT_LIMITS) -> FileRecord:
    """Read one file and check it; a file that cannot be read is an ``io`` diagnostic, one larger than
    ``limits.max_file_bytes`` a ``file-too-large`` one (its size is checked before it is read)."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            data = b"" if size > limits.max_file_bytes else handle.read(size + 1)
            if len(data) > size:  # it grew since fstat: read on, to one byte past the limit at most
                data += handle.read(max(0, limits.max_file_bytes + 1 - len(data)))
    except OSError as exc:
        problem = Diagnostic(Severity.ERROR, "io", f"cannot read file: {exc.strerror or exc}", display, 1, 1)
        return FileRecord(display, "", (problem,), (), (), (), ())
    if size > limits.max_file_bytes or len(data) > limits.max_file_bytes:
        return _too_large(display, max(size, len(data)), limits)
    return check_file(data, display, limits)


def _too_large(display: str, size: int, limits: Limits) -> FileRecord:
    message = f"file is larger than {limits.max_file_bytes} bytes ({size}); not read (see --max-file-bytes)"
    problem = Diagnostic(Severity.ERROR, "file-too-large", message, display, 1, 1)
    # The digest stands for the refused content in the tree's revision: its size, which changes with it.
    return FileRecord(display, f"too-large:{size}", (problem,), (), (), (), ())


def check_file(data: bytes, display: str, limits: Limits = DEFAULT_LIMITS) -> FileRecord:
    """Every per-file diagnostic of a file's bytes, and the plain data of its valid documents."""
    if len(data) > limits.max_file_bytes:
        return _too_large(display, len(data), limits)
    digest = hashlib.sha256(data).hexdigest()
    text = decode_source(data, display)
    if isinstance(text, Diagnostic):
        return FileRecord(display, digest, (text,), (), (), (), ())
    parsed = parse_source(text, display, limits)
    diagnostics = list(parsed.diagnostics)
    names: list[tuple[str, str, int, int]] = []
    patterns: list[PatternSite] = []
    webhooks: list[tuple[dict[str, Any], int, int]] = []
    event_types: list[str] = []
    if not parsed.documents and not parsed.diagnostics:
        message = "file holds no YAML document"
        diagnostics.append(Diagnostic(Severity.WARNING, "empty-document", message, display, 1, 1))
    for doc in parsed.documents:
        found, ours = _check_document(doc, display)
        diagnostics.extend(found)
        if not ours or not isinstance(doc.data, dict):
            continue
        kind = EVENT_TYPES_KIND if doc.data.get("kind") == EVENT_TYPES_KIND else KIND
        name = _get(_get(doc.data, "metadata"), "name")
        if isinstance(name, str):  # kept even for a broken document, so that duplicates are still found
            names.append((kind, name, *doc.value_position(("metadata", "name"))))
        if kind == KIND:
            patterns.extend(_pattern_sites(doc, display, {d.json_path for d in found if d.rule == "schema"}))
        if any(d.is_error for d in found):
            continue
        if kind == KIND:
            webhooks.append((doc.data, doc.line, doc.index))
        else:
            event_types.extend(entry["name"] for entry in doc.data["spec"]["event_types"])
    return FileRecord(
        display,
        digest,
        tuple(diagnostics),
        tuple(names),
        tuple(patterns),
        tuple(webhooks),
        tuple(event_types),
    )


def build_loaded(record: FileRecord) -> LoadedFile:
    """The value objects of a checked file."""
    file = record.path
    hooks = tuple(build_webhook(data, Source(file, line, index)) for data, line, index in record.webhooks)
    result = FileResult(file, record.digest, hooks, record.event_types, record.diagnostics)
    names = tuple(NameSite(kind, name, file, line, column) for kind, name, line, column in record.names)
    return LoadedFile(result, names, record.patterns)


def _check_document(doc: Document, file: str) -> tuple[list[Diagnostic], bool]:
    """The document's diagnostics, and whether it is one of ours (not empty, not another apiVersion/kind)."""
    found = list(doc.diagnostics)
    if doc.data is None:
        found.append(
            Diagnostic(Severity.WARNING, "empty-document", "empty YAML document", file, doc.line, doc.column)
        )
        return found, False
    envelope = check_envelope(doc, file)
    if envelope:
        return found + envelope, False  # someone else's document: its shape is not ours to judge
    rules = check_webhook(doc, file) if _get(doc.data, "kind") != EVENT_TYPES_KIND else []
    claimed = {d.json_path for d in rules if d.rule in CLAIMING_RULES}
    claimed.update(d.json_path for d in doc.diagnostics if d.rule == "number-range")  # said once
    return found + rules + check_schema(doc, file, claimed), True


def _get(data: Any, key: str) -> Any:
    return data.get(key) if isinstance(data, dict) else None


def _pattern_sites(doc: Document, file: str, rejected: set[str]) -> Iterator[PatternSite]:
    value = _get(_get(doc.data, "spec"), "event_type")
    items: list[tuple[JsonPath, Any]]
    if isinstance(value, list):
        items = [(("spec", "event_type", i), v) for i, v in enumerate(value)]
    else:
        items = [(("spec", "event_type"), value)]
    for path, pattern in items:
        # A pattern matching the bundled catalogue can never be unknown (the tree only adds event types), so
        # only the others are kept for the tree-level check, and only they need their position looked up.
        if not isinstance(pattern, str) or _matches_bundled(pattern):
            continue
        json_path = format_json_path(path)
        if json_path not in rejected:  # a malformed pattern is reported once, by the schema
            line, column = doc.value_position(path)
            yield PatternSite(pattern, file, line, column, json_path)


@functools.lru_cache(maxsize=4096)
def _matches_bundled(pattern: str) -> bool:
    return any(pattern_matches(pattern, name) for name in load_catalogue())


def build_webhook(document: dict[str, Any], source: Source) -> Webhook:
    """Turn one schema-valid ``kind: Webhook`` document into a ``Webhook`` (defaults per SPEC section 1)."""
    metadata, spec = document["metadata"], document["spec"]
    event_type = spec["event_type"]
    config = spec.get("config") or {}
    retry = spec.get("retry_countdown_config")
    callback = spec.get("callback")
    # A loaded tree keeps every webhook for as long as the dispatcher runs: the strings and small values that
    # repeat from file to file (label and header names and values, event types, secret names) are shared
    # rather than kept once per file. Names and URLs differ per file and are kept as parsed.
    return Webhook(
        name=metadata["name"],
        target_url=spec["target_url"],
        event_types=_shared(tuple(map(_text, (event_type,) if isinstance(event_type, str) else event_type))),
        active=spec.get("status", "active") == "active",
        secret_key=_secret(spec["secret_key"]) if "secret_key" in spec else None,
        additional_headers=_texts(
            {
                name: _secret(value) if isinstance(value, dict) else value
                for name, value in (spec.get("additional_headers") or {}).items()
            }
        ),
        timeout_seconds=_shared(float(config.get("timeout", 10.0))),
        auth=_auth(config["auth"]) if "auth" in config else None,
        match=_texts(config.get("match") or {}),
        scope=_texts(config["scope"]) if "scope" in config else None,
        retry=_retry(retry) if retry is not None else None,
        callback=Callback(callback["url"], _shared(frozenset(map(_text, callback.get("on", ("dead",))))))
        if callback
        else None,
        labels=_texts(metadata.get("labels") or {}),
        source=source,
    )


def _text(value: Any) -> Any:
    """``value``, the one shared copy of it if it is a string."""
    return sys.intern(value) if type(value) is str else value


def _texts(mapping: dict[str, Any]) -> dict[str, Any]:
    """``mapping`` with shared strings; the one dict for every webhook with equal contents when its values are
    hashable (webhooks' dicts are read-only by convention, see ``reconciler.model``)."""
    items = tuple((sys.intern(key), _text(value)) for key, value in mapping.items())
    try:
        # Types are part of the key: {channel_id: 1} must not become {channel_id: true} or {channel_id: 1.0}.
        return _shared_dict(tuple((key, type(value), value) for key, value in items))
    except TypeError:  # a list or mapping among the values
        return dict(items)


@functools.lru_cache(maxsize=4096)
def _shared_dict(items: tuple[tuple[str, type, Any], ...]) -> dict[str, Any]:
    return {key: value for key, _type, value in items}


_T = TypeVar("_T", bound=Hashable)


@functools.lru_cache(maxsize=4096, typed=True)
def _shared(value: _T) -> _T:
    """The first equal value seen (of the last few thousand distinct ones): one copy for every webhook."""
    return value


def _secret(ref: dict[str, str]) -> SecretRef:
    ((source, name),) = ref.items()
    shared: SecretRef = _shared(SecretRef("env" if source == "env" else "file", sys.intern(name)))
    return shared


def _auth(auth: dict[str, Any]) -> BasicAuth | TokenAuth:
    password = _secret(auth["password"])
    if auth["type"] == "basic":
        return BasicAuth(username=_text(auth["username"]), password=password)
    options = {
        k: _text(auth[k])
        for k in ("username_field", "password_field", "token_key", "header_format")
        if k in auth
    }
    return TokenAuth(url=auth["url"], username=_text(auth["username"]), password=password, **options)


def _retry(retry: dict[str, Any]) -> RetryConfig:
    return RetryConfig(
        choice=_text(retry["choice"]),
        kwargs=_texts(retry["kwargs"]),
        max_attempts=retry.get("max_attempts"),
        jitter=_shared(float(retry.get("jitter", 0.0))),
    )
