"""Load a ``webhooks.d/`` tree: every file parsed and checked, every problem a diagnostic, never an exception.

    files on disk ──read──▶ yamlsource (data + positions, YAML problems)
                            ├─ rules.check_envelope / check_webhook   (semantic rules, per document)
                            └─ schema.check_schema                    (shape; fast path first)
                  ──▶ FileResult (webhooks, catalogue entries, per-file diagnostics), cached per file
    all files     ──▶ rules.check_duplicate_names / check_event_types (need the whole tree)
                  ──▶ TreeResult (webhooks, diagnostics sorted by place, revision)

A document with an error contributes nothing, but the other documents of its file and tree still load, so
``reconcile`` can show a plan and the dispatcher can tell exactly what a broken change would drop.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.errors import SchemaError
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
from reconciler.routing import RoutingTable, build_routing_table, pattern_matches
from reconciler.rules import (
    CLAIMING_RULES,
    EVENT_TYPES_KIND,
    NameSite,
    PatternSite,
    check_duplicate_names,
    check_envelope,
    check_event_types,
    check_webhook,
)
from reconciler.schema import CATALOGUE_PATH, check_schema, is_valid, load_json
from reconciler.yamlsource import Document, JsonPath, decode_source, format_json_path, parse_source

YAML_SUFFIXES = (".yaml", ".yml")
# A file changed twice within one tick of a coarse filesystem clock keeps its (size, mtime); entries read that
# soon after their mtime are re-hashed on the next load instead of trusted (git's "racily clean" problem).
_RACY_NS = 2_000_000_000


@dataclass(frozen=True)
class FileResult:
    path: str  # as displayed in diagnostics (relative to cwd when under it, else as given)
    digest: str  # sha256 hex of the file bytes
    webhooks: tuple[Webhook, ...]
    event_types: tuple[str, ...]  # extra catalogue entries from EventTypes documents
    diagnostics: tuple[Diagnostic, ...]  # per-file problems only


@dataclass(frozen=True)
class TreeResult:
    directory: str
    files: tuple[FileResult, ...]  # sorted by path
    webhooks: tuple[Webhook, ...]  # valid webhooks of every file, sorted by name; first of a duplicate name
    diagnostics: tuple[Diagnostic, ...]  # per-file and cross-file, sorted by (file, line, column)
    revision: str  # "sha256:" + hex over sorted (relative path, file digest)

    @property
    def valid(self) -> bool:
        return self.error_count == 0

    @property
    def error_count(self) -> int:
        return sum(1 for d in self.diagnostics if d.is_error)

    @property
    def warning_count(self) -> int:
        return sum(1 for d in self.diagnostics if not d.is_error)

    def table(self) -> RoutingTable:
        return build_routing_table(self.webhooks, self.revision)


@dataclass(frozen=True)
class LoadedFile:
    """A file's result plus what the tree-level rules need from it (kept in the per-file cache)."""

    result: FileResult
    names: tuple[NameSite, ...]
    patterns: tuple[PatternSite, ...]


@functools.cache
def load_catalogue() -> frozenset[str]:
    """Event type names of the bundled catalogue (``schemas/events.v1.json``)."""
    document = load_json(CATALOGUE_PATH)
    if not is_valid(document) or document.get("kind") != EVENT_TYPES_KIND:
        raise SchemaError(f"bundled {CATALOGUE_PATH.name} is not a valid EventTypes document")
    return frozenset(entry["name"] for entry in document["spec"]["event_types"])


def load_tree(directory: str | Path) -> TreeResult:
    """Load and check a directory once (see ``TreeLoader`` to reload it cheaply)."""
    return TreeLoader(directory).load()


def load_file(path: Path, display: str) -> LoadedFile:
    """Read one file and check it on its own (no cross-file rules)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        problem = Diagnostic(Severity.ERROR, "io", f"cannot read file: {exc.strerror or exc}", display, 1, 1)
        return LoadedFile(FileResult(display, "", (), (), (problem,)), (), ())
    return build_file(data, display)


def build_file(data: bytes, display: str) -> LoadedFile:
    """Check one file's bytes on their own (no cross-file rules)."""
    digest = hashlib.sha256(data).hexdigest()
    text = decode_source(data, display)
    if isinstance(text, Diagnostic):
        return LoadedFile(FileResult(display, digest, (), (), (text,)), (), ())
    parsed = parse_source(text, display)
    diagnostics = list(parsed.diagnostics)
    webhooks: list[Webhook] = []
    event_types: list[str] = []
    names: list[NameSite] = []
    patterns: list[PatternSite] = []
    if not parsed.documents and not parsed.diagnostics:
        diagnostics.append(
            Diagnostic(Severity.WARNING, "empty-document", "file holds no YAML document", display, 1, 1)
        )
    for doc in parsed.documents:
        found, ours = _check_document(doc, display)
        diagnostics.extend(found)
        if not ours or not isinstance(doc.data, dict):
            continue
        kind = EVENT_TYPES_KIND if doc.data.get("kind") == EVENT_TYPES_KIND else KIND
        name = _get(_get(doc.data, "metadata"), "name")
        if isinstance(name, str):  # kept even for a broken document, so that duplicates are still found
            line, column = doc.value_position(("metadata", "name"))
            names.append(NameSite(kind, name, display, line, column))
        if kind == KIND:
            patterns.extend(_pattern_sites(doc, display, {d.json_path for d in found if d.rule == "schema"}))
        if any(d.is_error for d in found):
            continue
        if kind == KIND:
            webhooks.append(build_webhook(doc.data, Source(display, doc.line, doc.index)))
        else:
            event_types.extend(entry["name"] for entry in doc.data["spec"]["event_types"])
    result = FileResult(display, digest, tuple(webhooks), tuple(event_types), tuple(diagnostics))
    return LoadedFile(result, tuple(names), tuple(patterns))


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
    return found + rules + check_schema(doc, file, claimed), True


def _get(data: Any, key: str) -> Any:
    return data.get(key) if isinstance(data, dict) else None


def _pattern_sites(doc: Document, file: str, rejected: set[str]) -> Iterator[PatternSite]:
    spec = _get(doc.data, "spec")
    value = _get(spec, "event_type")
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
    return Webhook(
        name=metadata["name"],
        target_url=spec["target_url"],
        event_types=(event_type,) if isinstance(event_type, str) else tuple(event_type),
        active=spec.get("status", "active") == "active",
        secret_key=_secret(spec["secret_key"]) if "secret_key" in spec else None,
        additional_headers={
            name: _secret(value) if isinstance(value, dict) else value
            for name, value in (spec.get("additional_headers") or {}).items()
        },
        timeout_seconds=float(config.get("timeout", 10.0)),
        auth=_auth(config["auth"]) if "auth" in config else None,
        match=dict(config.get("match") or {}),
        retry=RetryConfig(
            choice=retry["choice"],
            kwargs=dict(retry["kwargs"]),
            max_attempts=retry.get("max_attempts"),
            jitter=float(retry.get("jitter", 0.0)),
        )
        if retry is not None
        else None,
        callback=Callback(callback["url"], frozenset(callback.get("on", ("dead",)))) if callback else None,
        labels=dict(metadata.get("labels") or {}),
        source=source,
    )


def _secret(ref: dict[str, str]) -> SecretRef:
    ((source, name),) = ref.items()
    return SecretRef("env" if source == "env" else "file", name)


def _auth(auth: dict[str, Any]) -> BasicAuth | TokenAuth:
    password = _secret(auth["password"])
    if auth["type"] == "basic":
        return BasicAuth(username=auth["username"], password=password)
    options = {
        k: auth[k] for k in ("username_field", "password_field", "token_key", "header_format") if k in auth
    }
    return TokenAuth(url=auth["url"], username=auth["username"], password=password, **options)


@dataclass(frozen=True)
class _Entry:
    signature: tuple[int, ...]
    racy: bool
    loaded: LoadedFile


class TreeLoader:
    """Incremental loader: re-parses only files whose (size, mtime_ns, inode) changed since the last load.

    ``ctime`` is part of the signature too, so a permission fix is noticed; a file read within two seconds of
    its modification is re-hashed on the next load, and re-parsed only if its bytes differ.
    """

    def __init__(self, directory: str | Path) -> None:
        self._directory = Path(directory)
        self._cache: dict[str, _Entry] = {}

    def load(self) -> TreeResult:
        """Load the tree, reusing the results of unchanged files from the previous load."""
        shown_dir = _display(self._directory)
        if not self._directory.exists():
            problem = Diagnostic(Severity.ERROR, "io", "no such directory", shown_dir, 1, 1)
            return TreeResult(shown_dir, (), (), (problem,), _revision([]))
        problems: list[Diagnostic] = []
        if self._directory.is_file():  # a single file: checked like a directory holding only it
            shown_dir = _display(self._directory.parent)
            found = [(str(self._directory), self._directory.name)]
        else:
            found = _discover(str(self._directory), problems, shown_dir)
        prefix = "" if shown_dir == "." else shown_dir.rstrip("/") + "/"
        now = time.time_ns()
        cache: dict[str, _Entry] = {}
        loaded: list[tuple[str, LoadedFile]] = []
        for path, relative in found:
            shown = prefix + relative
            entry = cache[shown] = self._refresh(path, shown, self._cache.get(shown), now)
            loaded.append((relative, entry.loaded))
        self._cache = cache
        return _assemble(shown_dir, loaded, problems)

    @staticmethod
    def _refresh(path: str, shown: str, entry: _Entry | None, now: int) -> _Entry:
        try:
            st = os.stat(path)
        except OSError:
            return _Entry((), False, load_file(Path(path), shown))
        signature = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
        racy = now - max(st.st_mtime_ns, st.st_ctime_ns) < _RACY_NS
        if entry is not None and entry.signature == signature:
            if not entry.racy:
                return entry
            try:
                with open(path, "rb") as handle:
                    same = hashlib.sha256(handle.read()).hexdigest() == entry.loaded.result.digest
            except OSError:
                same = False
            if same:
                return _Entry(signature, racy, entry.loaded)
        return _Entry(signature, racy, load_file(Path(path), shown))


def _display(path: Path) -> str:
    """``path`` relative to the working directory when under it, else as given."""
    try:
        return Path(os.path.abspath(path)).relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(path)


def _discover(root: str, problems: list[Diagnostic], shown_root: str) -> list[tuple[str, str]]:
    """YAML files under ``root`` as (path, path relative to root), sorted by relative path.

    Hidden names are skipped (this also skips Kubernetes ConfigMap internals such as ``..data``); a directory
    reached twice through symlinks is walked once.
    """
    found: list[tuple[str, str]] = []
    seen: set[tuple[int, int]] = set()
    pending: list[tuple[str, str]] = [(root, "")]
    while pending:
        directory, prefix = pending.pop()
        try:
            st = os.stat(directory)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(directory) as entries:
                listing = list(entries)
        except OSError as exc:
            where = f"{shown_root}/{prefix}".rstrip("/")
            problems.append(
                Diagnostic(Severity.ERROR, "io", f"cannot read directory: {exc.strerror}", where, 1, 1)
            )
            continue
        for entry in listing:
            if entry.name.startswith("."):
                continue
            relative = prefix + entry.name
            try:
                if entry.is_dir():
                    pending.append((entry.path, relative + "/"))
                elif entry.name.endswith(YAML_SUFFIXES) and entry.is_file():
                    found.append((entry.path, relative))
            except OSError:
                continue  # vanished, or a dangling symlink: not a file to load
    return sorted(found, key=lambda item: item[1])


def _revision(pairs: list[tuple[str, str]]) -> str:
    digest = hashlib.sha256()
    for relative, file_digest in sorted(pairs):
        digest.update(f"{relative}\0{file_digest}\n".encode())
    return "sha256:" + digest.hexdigest()


def _assemble(directory: str, loaded: list[tuple[str, LoadedFile]], problems: list[Diagnostic]) -> TreeResult:
    catalogue = load_catalogue().union(*(f.result.event_types for _, f in loaded))
    cross = check_duplicate_names(site for _, f in loaded for site in f.names)
    cross += check_event_types((site for _, f in loaded for site in f.patterns), catalogue)
    webhooks: dict[str, Webhook] = {}
    for _, f in loaded:
        for hook in f.result.webhooks:
            webhooks.setdefault(hook.name, hook)
    diagnostics = [d for _, f in loaded for d in f.result.diagnostics] + cross + problems
    diagnostics.sort(key=lambda d: (d.file, d.line, d.column))
    return TreeResult(
        directory=directory,
        files=tuple(f.result for _, f in loaded),
        webhooks=tuple(webhooks[name] for name in sorted(webhooks)),
        diagnostics=tuple(diagnostics),
        revision=_revision([(relative, f.result.digest) for relative, f in loaded]),
    )
