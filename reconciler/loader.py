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
import stat
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Collection
from concurrent.futures import Future, ProcessPoolExecutor
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
from reconciler.limits import DEFAULT_LIMITS, Limits
from reconciler.model import Diagnostic, Severity
from reconciler.schema import load_catalogue
from reconciler.treeindex import TreeIndex, TreeResult, build_revision

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
_PIECE = 200  # files checked in a worker process per round trip


def load_tree(directory: str | Path, limits: Limits = DEFAULT_LIMITS) -> TreeResult:
    """Load and check a directory once (see ``TreeLoader`` to reload it cheaply)."""
    return TreeLoader(directory, limits).load()


# (size, mtime_ns, inode, ctime_ns) packed: 72 bytes per file instead of a tuple of four large ints (210).
_SIGNATURE = struct.Struct("<qqQq")


@dataclass(frozen=True, slots=True)
class _Entry:
    signature: bytes  # _SIGNATURE; empty when the file could not be read
    racy: bool
    loaded: LoadedFile


@dataclass(frozen=True, slots=True)
class _Layout:
    """What the last full scan found besides files: enough to tell whether a list of changed paths can
    stand in for the next scan (no symlinks, every directory readable; the directories walked)."""

    shown_dir: str
    directories: frozenset[str]  # relative prefixes of the directories walked: "" for the root, "sub/", ...


class TreeLoader:
    """Incremental loader: re-parses only files whose (size, mtime_ns, inode) changed since the last load.

    ``ctime`` is part of the signature too, so a permission fix is noticed; a file read within two seconds of
    its modification is re-hashed on the next load, and re-parsed only if its bytes differ.

    Given the paths a watcher saw change, ``load`` looks at only those (no walk, no ``stat`` of the other
    files) when the last full scan found a plain tree: no symlinks, no unreadable directory, and every
    changed path in a directory it walked. Otherwise, and without the paths, it scans everything.
    """

    def __init__(self, directory: str | Path, limits: Limits = DEFAULT_LIMITS) -> None:
        self._directory = Path(directory)
        self._limits = limits
        self._cache: dict[str, _Entry] = {}
        self._index = TreeIndex()  # mirrors ``_cache``: the cross-file state of the files loaded last
        self._layout: _Layout | None = None  # None: the next load must scan everything

    def load(self, changed: Collection[str] | None = None) -> TreeResult:
        """Load the tree, reusing the results of unchanged files from the previous load.

        ``changed``: paths relative to the directory (``/``-separated) that may have changed since the last
        load, all of them (a watcher's events); None when unknown. Should a load raise (a bug, or memory),
        everything cached is dropped: a half-applied update must not make the next load wrong.
        """
        try:
            return self._load(changed)
        except BaseException:
            self._cache.clear()
            self._index = TreeIndex()
            self._layout = None
            raise

    def _load(self, changed: Collection[str] | None) -> TreeResult:
        shown_dir = _display(self._directory)
        if changed is not None and self._layout is not None and self._layout.shown_dir == shown_dir:
            result = self._load_changed(changed, self._layout)
            if result is not None:
                return result
        self._layout = None
        if not self._directory.exists():
            problem = Diagnostic(Severity.ERROR, "io", "no such directory", shown_dir, 1, 1)
            return TreeResult(shown_dir, (), (), (problem,), build_revision([]))
        problems: list[Diagnostic] = []
        if self._directory.is_file():  # a single file: checked like a directory holding only it
            shown_dir = _display(self._directory.parent)
            found = [(str(self._directory), self._directory.name)]
        else:
            found, directories, plain = _discover(str(self._directory), problems, shown_dir)
            if plain and not problems:
                self._layout = _Layout(shown_dir, frozenset(directories))
        prefix = _prefix(shown_dir)
        candidates = [(path, prefix + relative, relative) for path, relative in found]
        listed = {shown for _path, shown, _relative in candidates}
        self._refresh(candidates, [shown for shown in self._cache if shown not in listed])
        return self._index.result(shown_dir, problems)

    def _load_changed(self, changed: Collection[str], layout: _Layout) -> TreeResult | None:
        """The tree after changes to ``changed`` only; None when they may have changed more than files."""
        prefix = _prefix(layout.shown_dir)
        candidates: list[tuple[str, str, str]] = []
        gone: list[str] = []
        for relative in changed:
            parts = relative.split("/")
            if any(part.startswith(".") for part in parts):
                continue  # hidden (an editor's or git's temporary file): never loaded, and no link points in
            if "" in parts or relative[: relative.rfind("/") + 1] not in layout.directories:
                return None  # the root itself, or in a directory the scan did not walk (a new one)
            path = os.path.join(self._directory, relative)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                st = None
            except OSError:
                return None
            if st is not None and not stat.S_ISREG(st.st_mode):
                return None  # now a directory or a symlink: the layout changed
            if not relative.endswith(YAML_SUFFIXES):
                continue
            shown = prefix + relative
            if st is not None:
                candidates.append((path, shown, relative))
            elif shown in self._cache:
                gone.append(shown)
        self._refresh(candidates, gone)
        return self._index.result(layout.shown_dir, ())

    def _refresh(self, candidates: list[tuple[str, str, str]], gone: list[str]) -> None:
        """Check ``candidates`` (path, shown, relative) for changes, forget ``gone``; update the index."""
        now = time.time_ns()
        cache = self._cache
        stale: list[tuple[str, str, bytes, bool]] = []  # (path, shown, signature, racy)
        relatives: dict[str, str] = {}  # shown -> relative, of the stale files
        for path, shown, relative in candidates:
            entry = _reuse(path, cache.get(shown), now, self._limits)
            if isinstance(entry, _Entry):
                cache[shown] = entry
            elif shown not in relatives:
                stale.append((path, shown, *entry))
                relatives[shown] = relative
        replaced = [shown for shown in relatives if shown in cache]
        for shown in gone:
            del cache[shown]
        loaded_files = _load_many(stale, self._limits)
        for (_path, shown, signature, racy), loaded in zip(stale, loaded_files, strict=True):
            cache[shown] = _Entry(signature, racy, loaded)
        added = [(shown, relative, cache[shown].loaded) for shown, relative in relatives.items()]
        self._index.update(gone + replaced, added)


def _prefix(shown_dir: str) -> str:
    return "" if shown_dir == "." else shown_dir.rstrip("/") + "/"


def _reuse(path: str, entry: _Entry | None, now: int, limits: Limits) -> _Entry | tuple[bytes, bool]:
    """The cached entry if the file is unchanged, else the (signature, racy) to store with its new result."""
    try:
        st = os.stat(path)
    except OSError:
        return b"", False  # vanished or unreadable since discovery: loading it reports why
    signature = _SIGNATURE.pack(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    racy = now - max(st.st_mtime_ns, st.st_ctime_ns) < _RACY_NS
    if entry is None or entry.signature != signature or st.st_size > limits.max_file_bytes:
        return signature, racy  # (refusing a file that is too large costs less than hashing it)
    if not entry.racy:
        return entry
    try:
        with open(path, "rb") as handle:
            same = hashlib.sha256(handle.read()).hexdigest() == entry.loaded.result.digest
    except OSError:
        same = False
    return _Entry(signature, racy, entry.loaded) if same else (signature, racy)


def _load_many(stale: list[tuple[str, str, bytes, bool]], limits: Limits) -> list[LoadedFile]:
    """``load_file`` for each stale file, in order; shared with forked processes when there are many."""
    jobs = [(path, shown) for path, shown, _signature, _racy in stale]
    workers = _worker_count(len(jobs))
    shared = _load_shared(jobs, workers, limits) if workers > 1 else None
    return shared if shared is not None else [load_file(Path(path), shown, limits) for path, shown in jobs]


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


def _load_shared(jobs: list[tuple[str, str]], workers: int, limits: Limits) -> list[LoadedFile] | None:
    """Check ``jobs`` here and in ``workers - 1`` forked processes; None when processes cannot be had.

    This process takes a share too, so on a machine whose other cores are busy the load costs about what it
    would sequentially, and on an idle one it takes about 1/workers of that. Work goes out in pieces of
    ``_PIECE`` files, at most two per worker at a time, and each piece's records are built as soon as they are
    back: the plain data of a few hundred documents is all this process holds at once. (Holding half a tree's
    records until the end left this process about 20 MB larger for 10,000 files, in memory that the objects
    built meanwhile keep from being reused or returned.)
    """
    load_catalogue()  # compile the schema and read the catalogue once, before forking, for every process
    size = max(1, min(_PIECE, len(jobs) // (3 * workers)))  # a small load still reaches every process
    pieces = [jobs[i : i + size] for i in range(0, len(jobs), size)]
    loaded: list[list[LoadedFile]] = [[] for _piece in pieces]
    try:
        with ProcessPoolExecutor(workers - 1, mp_context=multiprocessing.get_context("fork")) as pool:
            sent: deque[tuple[int, Future[list[FileRecord]]]] = deque()
            taken = 0  # pieces handed out so far, to a worker or to this process
            while taken < len(pieces) or sent:
                while taken < len(pieces) and len(sent) < 2 * (workers - 1):
                    sent.append((taken, pool.submit(_check_chunk, pieces[taken], limits)))
                    taken += 1
                if sent and (sent[0][1].done() or taken == len(pieces)):
                    index, future = sent.popleft()
                    loaded[index] = [build_loaded(record) for record in future.result()]
                else:
                    loaded[taken] = [load_file(Path(path), shown, limits) for path, shown in pieces[taken]]
                    taken += 1
            return [file for piece in loaded for file in piece]
    except (OSError, BrokenProcessPool):
        return None


def _check_chunk(jobs: list[tuple[str, str]], limits: Limits) -> list[FileRecord]:
    return [read_and_check(path, shown, limits) for path, shown in jobs]


def _display(path: Path) -> str:
    """``path`` relative to the working directory when under it, else as given."""
    try:
        return Path(os.path.abspath(path)).relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(path)


def _discover(
    root: str, problems: list[Diagnostic], shown_root: str
) -> tuple[list[tuple[str, str]], list[str], bool]:
    """YAML files under ``root`` as (path to open, path relative to root), sorted by relative path; the
    relative prefixes of the directories walked; and whether no symlink was met.

    Hidden names are skipped (this also skips Kubernetes ConfigMap internals such as ``..data``); a directory
    reached twice through symlinks is walked once. A symlink is followed only when it resolves inside the
    root (itself resolved first, so the root may be a link): a file reached through one is opened by its
    resolved path, so what is read is what was checked. One that resolves outside is a ``symlink-outside``
    diagnostic and its target is never opened (a committed link must not make the loader quote
    ``/etc/shadow`` in a diagnostic). A YAML name that is neither a file nor a directory (a FIFO, a socket, a
    device; directly or through a link inside the tree) is a ``not-a-regular-file`` diagnostic and is never
    opened either: opening a FIFO blocks until someone writes to it.
    """
    found: list[tuple[str, str]] = []
    directories: list[str] = []
    plain = True
    seen: set[tuple[int, int]] = set()
    real_root = os.path.realpath(root)
    inside = real_root.rstrip("/") + "/"
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
            directories.append(prefix)
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
            path = entry.path
            try:
                if entry.is_symlink():
                    plain = False
                    path = os.path.realpath(path)
                    if path != real_root and not path.startswith(inside):
                        if entry.name.endswith(YAML_SUFFIXES) or os.path.isdir(path):
                            problems.append(_outside(shown_root, relative, entry.path))
                        continue
                if entry.is_dir():
                    pending.append((path, relative + "/"))
                elif entry.name.endswith(YAML_SUFFIXES):
                    if entry.is_file():
                        found.append((path, relative))
                    else:  # stat, never open; a dangling link raises and is skipped below
                        problems.append(_not_regular(shown_root, relative, os.stat(path).st_mode))
            except OSError:
                continue  # vanished, or a dangling symlink: not a file to load
    return sorted(found, key=lambda item: item[1]), directories, plain


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"))  # fmt: skip


def _not_regular(shown_root: str, relative: str, mode: int) -> Diagnostic:
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    message = f"{kind}, not a regular file; refused, it is not read"
    return Diagnostic(Severity.ERROR, "not-a-regular-file", message, _prefix(shown_root) + relative, 1, 1)


def _outside(shown_root: str, relative: str, link: str) -> Diagnostic:
    try:
        target = os.readlink(link)
    except OSError:
        target = "?"
    message = f"symlink to {target!r} resolves outside the config directory; refused, its target is not read"
    return Diagnostic(Severity.ERROR, "symlink-outside", message, _prefix(shown_root) + relative, 1, 1)
