"""The tree-wide part of a load, kept up to date file by file.

A reload after one file changed must not redo over all 10,000 files what only the whole tree can decide:
duplicate names, unknown event types, which webhook wins a name, the sorted lists and the revision.
``TreeIndex`` keeps, per name and per file, what those decisions rest on, and a change re-decides only the
names and files it touches. The result is exactly that of checking the same files afresh (the tests compare
both); ``build_tree_result`` is that fresh check, for a one-off load.
"""

from __future__ import annotations

import bisect
import hashlib
import operator
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat
from operator import attrgetter, getitem

from reconciler.filecheck import FileResult, LoadedFile
from reconciler.model import Diagnostic, Webhook
from reconciler.routing import RoutingTable, build_routing_table
from reconciler.rules import NameSite, PatternSite, check_duplicate_names, check_event_types
from reconciler.schema import load_catalogue


@dataclass(frozen=True)
class TreeResult:
    directory: str
    files: tuple[FileResult, ...]  # sorted by path
    webhooks: tuple[Webhook, ...]  # valid webhooks of every file, sorted by name; first of a duplicate name
    diagnostics: tuple[Diagnostic, ...]  # per-file and cross-file, sorted by (file, line, column)
    revision: str  # "sha256:" + hex over sorted (relative path, file digest)
    #: How many of ``diagnostics`` are errors, when the builder counted them (a reload must not recount).
    errors: int | None = field(default=None, compare=False, repr=False)

    @property
    def valid(self) -> bool:
        return self.error_count == 0

    @property
    def error_count(self) -> int:
        if self.errors is not None:
            return self.errors
        return sum(1 for d in self.diagnostics if d.is_error)

    @property
    def warning_count(self) -> int:
        return sum(1 for d in self.diagnostics if not d.is_error)

    def table(self, previous: RoutingTable | None = None) -> RoutingTable:
        """The routing table of these webhooks; derived from ``previous`` (which stays as it was) if given."""
        if previous is None:
            return build_routing_table(self.webhooks, self.revision)
        return previous.patched(
            dict(zip(map(_name, self.webhooks), self.webhooks, strict=True)), self.revision
        )


def build_revision(pairs: Iterable[tuple[str, str]]) -> str:
    """The tree's revision: a hash over its sorted (relative path, file digest) pairs."""
    return _hash_revision("".join(_revision_line(relative, digest) for relative, digest in sorted(pairs)))


def _revision_line(relative: str, file_digest: str) -> str:
    return f"{relative}\0{file_digest}\n"


def _hash_revision(lines: str) -> str:
    return "sha256:" + hashlib.sha256(lines.encode()).hexdigest()


_NameKey = tuple[str, str]  # (kind, name)


class TreeIndex:
    """Every loaded file of a tree, keyed by its displayed path, plus the cross-file state derived from them.

    ``update`` replaces files; ``result`` assembles a ``TreeResult`` in time proportional to the number of
    files and webhooks only for building its tuples (no rule runs over unchanged files).
    """

    def __init__(self) -> None:
        self._files: dict[str, LoadedFile] = {}  # by shown path
        # By shown path: where its relative path starts (the revision hashes relative paths). Revision lines
        # are formatted for each result rather than kept: a few milliseconds for 10,000 files, 1.3 MB saved.
        self._relative_at: dict[str, int] = {}
        self._relatives: dict[str, str] = {}  # the relative paths that are not a suffix of the shown path
        self._order: list[str] = []  # shown paths, sorted (one prefix for all, so also by relative path)
        # Sites of each name by kind, in file order, then document. Sites and webhooks know their file (the
        # shown path, as the loader builds them), so nothing else is kept per entry.
        self._names: dict[str, dict[str, tuple[NameSite, ...]]] = {}
        self._duplicates: dict[_NameKey, list[Diagnostic]] = {}  # only names used more than once
        self._winners: dict[str, Webhook] = {}  # the first valid webhook of each name
        self._hooks: dict[str, tuple[Webhook, ...]] = {}  # every one, in file order: only names with several
        self._sorted_names: list[str] = []
        self._extra_types: Counter[str] = Counter()  # EventTypes entries of every file
        self._catalogue = load_catalogue()
        self._patterns: dict[str, tuple[PatternSite, ...]] = {}  # files with patterns to check
        self._unknown: dict[str, list[Diagnostic]] = {}  # files with unknown event types
        # Every diagnostic placed in a file (its own, duplicate names, unknown types), sorted by place; only
        # files that have any. Kept per file so that a reload sorts only the diagnostics of changed files.
        self._diagnostics: dict[str, tuple[Diagnostic, ...]] = {}
        self._foreign = False  # some file reports a diagnostic placed in another file: sort them all
        self._error_counts: dict[str, int] = {}  # errors among each file's placed diagnostics
        self._errors = 0

    def __len__(self) -> int:
        return len(self._files)

    def update(self, removed: Iterable[str], added: Iterable[tuple[str, str, LoadedFile]]) -> None:
        """Drop the files ``removed`` names, then add ``added`` (shown path, relative path, loaded file);
        a changed file is in both."""
        touched: set[_NameKey] = set()
        types_touched = False
        dirty: set[str] = set()  # files whose placed diagnostics must be gathered again
        for shown in removed:
            loaded = self._files.pop(shown)
            del self._relative_at[shown]
            self._relatives.pop(shown, None)
            del self._order[bisect.bisect_left(self._order, shown)]
            types_touched |= self._remove(shown, loaded, touched)
            dirty.add(shown)
        new: list[str] = []
        for shown, relative, loaded in added:
            self._files[shown] = loaded
            self._relative_at[shown] = len(shown) - len(relative)
            if not shown.endswith(relative):
                self._relatives[shown] = relative
            bisect.insort(self._order, shown)
            types_touched |= self._add(shown, loaded, touched)
            new.append(shown)
        for key in touched:
            dirty.update(d.file for d in self._duplicates.get(key, ()))
            sites = self._names.get(key[0], {}).get(key[1])
            found = check_duplicate_names(sites) if sites and len(sites) > 1 else []
            if found:
                self._duplicates[key] = found
                dirty.update(d.file for d in found)
            else:
                self._duplicates.pop(key, None)
        judge = new
        if types_touched:
            catalogue = load_catalogue().union(self._extra_types)
            if catalogue != self._catalogue:
                self._catalogue = catalogue
                judge = list(self._patterns)  # the catalogue changed: every pattern is judged again
        for shown in judge:
            dirty.update(d.file for d in self._unknown.get(shown, ()))
            self._check_patterns(shown)
            dirty.update(d.file for d in self._unknown.get(shown, ()))
        dirty.update(new)
        for shown in dirty:
            self._gather(shown)

    def _gather(self, shown: str) -> None:
        """Collect the diagnostics placed in one file, in the order a fresh check sorts them into."""
        self._errors -= self._error_counts.pop(shown, 0)
        loaded = self._files.get(shown)
        if loaded is None:
            self._diagnostics.pop(shown, None)
            return
        # Before the stable sort, a fresh check lists a file's own diagnostics, then duplicate names, then
        # unknown event types; ties keep that order.
        found = list(loaded.result.diagnostics)
        keys = dict.fromkeys((site.kind, site.name) for site in loaded.names)
        found += (d for key in keys for d in self._duplicates.get(key, ()) if d.file == shown)
        found += self._unknown.get(shown, ())
        if any(d.file != shown for d in found):
            self._foreign = True
        if found:
            ordered = sorted(found, key=_place)
            own = loaded.result.diagnostics
            # Usually the file's own diagnostics, already in order: keep their tuple rather than a copy.
            same = len(ordered) == len(own) and all(map(operator.is_, ordered, own))
            self._diagnostics[shown] = own if same else tuple(ordered)
            errors = sum(1 for d in found if d.is_error)
            if errors:
                self._error_counts[shown] = errors
                self._errors += errors
        else:
            self._diagnostics.pop(shown, None)

    def _remove(self, shown: str, loaded: LoadedFile, touched: set[_NameKey]) -> bool:
        for site in loaded.names:
            touched.add((site.kind, site.name))
            names = self._names[site.kind]
            sites = names.get(site.name)
            if sites is None:
                continue  # a name used twice in this file: already gone
            sites = tuple(other for other in sites if other.file != shown)
            if sites:
                names[site.name] = sites
            else:
                del names[site.name]
        for hook in loaded.result.webhooks:
            name = hook.name
            hooks = self._hooks.pop(name, None)
            if hooks is not None:
                hooks = tuple(other for other in hooks if other.source.file != shown)
                if len(hooks) > 1:
                    self._hooks[name] = hooks
                if hooks:
                    self._winners[name] = hooks[0]
                    continue
            if self._winners.get(name) is hook or hooks == ():
                del self._winners[name]
                del self._sorted_names[bisect.bisect_left(self._sorted_names, name)]
        self._patterns.pop(shown, None)
        self._unknown.pop(shown, None)
        self._extra_types.subtract(loaded.result.event_types)
        self._extra_types += Counter()  # drops the entries that reached zero
        return bool(loaded.result.event_types)

    def _add(self, shown: str, loaded: LoadedFile, touched: set[_NameKey]) -> bool:
        # A file's sites and webhooks are added in document order; a stable sort by file keeps that order.
        for site in loaded.names:
            names = self._names.setdefault(site.kind, {})
            sites = names.get(site.name)
            if sites is not None:
                names[site.name] = tuple(sorted((*sites, site), key=_site_file))
            else:  # the usual file, with one name: its own tuple of sites is that name's
                names[site.name] = loaded.names if len(loaded.names) == 1 else (site,)
            touched.add((site.kind, site.name))
        for hook in loaded.result.webhooks:
            name = hook.name
            winner = self._winners.get(name)
            if winner is None:
                self._winners[name] = hook
                bisect.insort(self._sorted_names, name)
            else:
                hooks = tuple(sorted((*self._hooks.get(name, (winner,)), hook), key=_hook_file))
                self._hooks[name] = hooks
                self._winners[name] = hooks[0]
        if loaded.patterns:
            self._patterns[shown] = loaded.patterns
        self._extra_types.update(loaded.result.event_types)
        return bool(loaded.result.event_types)

    def _check_patterns(self, shown: str) -> None:
        found = check_event_types(self._patterns.get(shown, ()), self._catalogue)
        if found:
            self._unknown[shown] = found
        else:
            self._unknown.pop(shown, None)

    def _revision(self, order: list[str]) -> str:
        """The revision of the files in ``order`` (every file, sorted), as ``build_revision`` computes it."""
        digests = map(_digest, map(self._files.__getitem__, order))
        if self._relatives:
            relatives: Iterable[str] = [self._relatives.get(s) or s[self._relative_at[s] :] for s in order]
        else:  # the loader's case: C loops only
            starts = map(slice, map(self._relative_at.__getitem__, order), repeat(None))
            relatives = map(getitem, order, starts)
        return _hash_revision("".join(map(_line_format, relatives, digests)))

    def result(self, directory: str, problems: Sequence[Diagnostic] = ()) -> TreeResult:
        """The tree as it stands, with ``problems`` found outside any file (unreadable directories)."""
        # map/chain keep the loops over 10,000 files in C: this runs on every reload.
        order = self._order
        if self._foreign:  # a file reported a problem placed elsewhere (not expected): sort as a fresh check
            diagnostics = [d for shown in order for d in self._files[shown].result.diagnostics]
            diagnostics += sorted((d for found in self._duplicates.values() for d in found), key=_place)
            diagnostics += (d for shown in order for d in self._unknown.get(shown, ()))
        else:
            diagnostics = list(chain.from_iterable(filter(None, map(self._diagnostics.get, order))))
        if problems or self._foreign:  # directories sort between files
            diagnostics += problems
            diagnostics.sort(key=_place)
        errors = None if self._foreign else self._errors + sum(1 for d in problems if d.is_error)
        return TreeResult(
            directory=directory,
            files=tuple(map(_result, map(self._files.__getitem__, order))),
            webhooks=tuple(map(self._winners.__getitem__, self._sorted_names)),
            diagnostics=tuple(diagnostics),
            revision=self._revision(order),
            errors=errors,
        )


_site_file = attrgetter("file")
_digest = attrgetter("result.digest")
_line_format = _revision_line("{}", "{}").format
_hook_file = attrgetter("source.file")


_name = attrgetter("name")
_result = attrgetter("result")


def _place(d: Diagnostic) -> tuple[str, int, int]:
    return d.file, d.line, d.column


def build_tree_result(
    directory: str, loaded: Sequence[tuple[str, LoadedFile]], problems: Sequence[Diagnostic] = ()
) -> TreeResult:
    """The result of checking ``loaded`` (relative path, loaded file) as one tree, from scratch."""
    index = TreeIndex()
    index.update((), ((f.result.path, relative, f) for relative, f in loaded))
    return index.result(directory, problems)
