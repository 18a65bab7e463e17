"""Load a ``webhooks.d/`` tree: every file parsed and checked, every problem a diagnostic, never an exception.

    files on disk ──read──▶ yamlsource (data + positions, YAML problems)
                            ├─ rules.check_envelope / check_webhook   (semantic rules, per document)
                            └─ schema.check_schema                    (shape; fast path first)
                  ──▶ FileResult (webhooks, catalogue entries, per-file diagnostics), cached per file
                    (filecheck: checked in worker processes for a large cold load)
    all files     ──▶ rules.check_duplicate_names / check_event_types (need the whole tree)
                  ──▶ TreeResult (webhooks, diagnostics sorted by place, revision)

A document with an error contributes nothing, but the other documents of its file and tree still load, so
``reconcile`` can show a plan and the dispatcher can tell exactly what a broken change would drop.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from reconciler.filecheck import (
    FileRecord,
    FileResult,
    LoadedFile,
    build_file,
    build_loaded,
    build_webhook,
    load_file,
    read_and_check,
)
from reconciler.model import Diagnostic, Severity, Webhook
from reconciler.routing import RoutingTable, build_routing_table
from reconciler.rules import check_duplicate_names, check_event_types
from reconciler.schema import load_catalogue

__all__ = [
    "FileResult",
    "LoadedFile",
    "TreeLoader",
    "TreeResult",
    "build_file",
    "build_webhook",
    "load_catalogue",
    "load_file",
    "load_tree",
]

YAML_SUFFIXES = (".yaml", ".yml")
# A file changed twice within one tick of a coarse filesystem clock keeps its (size, mtime); entries read that
# soon after their mtime are re-hashed on the next load instead of trusted (git's "racily clean" problem).
_RACY_NS = 2_000_000_000
_PARALLEL_MIN_FILES = 1000  # a cold load of this many files is checked in worker processes
_MAX_WORKERS = 8


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


def load_tree(directory: str | Path) -> TreeResult:
    """Load and check a directory once (see ``TreeLoader`` to reload it cheaply)."""
    return TreeLoader(directory).load()


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
        stale: list[tuple[str, str, tuple[int, ...], bool]] = []  # (path, shown, signature, racy)
        for path, relative in found:
            shown = prefix + relative
            entry = _reuse(path, self._cache.get(shown), now)
            if isinstance(entry, _Entry):
                cache[shown] = entry
            else:
                stale.append((path, shown, *entry))
        for (_path, shown, signature, racy), loaded in zip(stale, _load_many(stale), strict=True):
            cache[shown] = _Entry(signature, racy, loaded)
        self._cache = cache
        loaded_files = [(relative, cache[prefix + relative].loaded) for _path, relative in found]
        return _assemble(shown_dir, loaded_files, problems)


def _reuse(path: str, entry: _Entry | None, now: int) -> _Entry | tuple[tuple[int, ...], bool]:
    """The cached entry if the file is unchanged, else the (signature, racy) to store with its new result."""
    try:
        st = os.stat(path)
    except OSError:
        return (), False  # vanished or unreadable since discovery: loading it reports why
    signature = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    racy = now - max(st.st_mtime_ns, st.st_ctime_ns) < _RACY_NS
    if entry is None or entry.signature != signature:
        return signature, racy
    if not entry.racy:
        return entry
    try:
        with open(path, "rb") as handle:
            same = hashlib.sha256(handle.read()).hexdigest() == entry.loaded.result.digest
    except OSError:
        same = False
    return _Entry(signature, racy, entry.loaded) if same else (signature, racy)


def _load_many(stale: list[tuple[str, str, tuple[int, ...], bool]]) -> list[LoadedFile]:
    """``load_file`` for each stale file, in order; shared with forked processes when there are many."""
    jobs = [(path, shown) for path, shown, _signature, _racy in stale]
    workers = _worker_count(len(jobs))
    shared = _load_shared(jobs, workers) if workers > 1 else None
    return shared if shared is not None else [load_file(Path(path), shown) for path, shown in jobs]


def _worker_count(files: int) -> int:
    """How many processes should share a load of ``files`` files (1: this process alone).

    Worker processes are forked, which is only safe in a process without other threads (the reconcile CLI;
    the dispatcher's first load at the latest). Below a thousand files the start-up cost is not repaid, and
    on a machine whose cores are already busy (load average) extra processes only add that cost.
    """
    if files < _PARALLEL_MIN_FILES or sys.platform != "linux" or threading.active_count() > 1:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except OSError:
        cpus = os.cpu_count() or 1
    idle = 1 + int(cpus - os.getloadavg()[0])
    return max(1, min(cpus, idle, _MAX_WORKERS, files // (_PARALLEL_MIN_FILES // 2)))


def _load_shared(jobs: list[tuple[str, str]], workers: int) -> list[LoadedFile] | None:
    """Check ``jobs`` here and in ``workers - 1`` forked processes; None when processes cannot be had.

    This process takes a share too, so on a machine whose other cores are busy the load costs about what it
    would sequentially, and on an idle one it takes about 1/workers of that.
    """
    load_catalogue()  # compile the schema and read the catalogue once, before forking, for every process
    size = -(-len(jobs) // workers)
    own, *others = [jobs[i : i + size] for i in range(0, len(jobs), size)]
    try:
        with ProcessPoolExecutor(len(others), mp_context=multiprocessing.get_context("fork")) as pool:
            pending = [pool.submit(_check_chunk, chunk) for chunk in others]
            mine = [load_file(Path(path), shown) for path, shown in own]
            return mine + [build_loaded(record) for future in pending for record in future.result()]
    except (OSError, BrokenProcessPool):
        return None


def _check_chunk(jobs: list[tuple[str, str]]) -> list[FileRecord]:
    return [read_and_check(path, shown) for path, shown in jobs]


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
