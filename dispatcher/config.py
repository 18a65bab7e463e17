"""The dispatcher's view of ``webhooks.d/``: a routing table plus resolved secrets, swapped as one value.

The dispatcher never parses YAML: it asks the reconciler's loader, and adds only what the reconciler must not
do (reading secrets). A snapshot is built completely off to the side; callers swap the reference atomically.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dispatcher.errors import ConfigError, SecretError
from dispatcher.secrets import Signature, file_signature, resolve_secret
from reconciler.limits import DEFAULT_LIMITS, Limits
from reconciler.loader import TreeLoader
from reconciler.model import Diagnostic, SecretRef, Webhook
from reconciler.routing import RoutingTable, changed_webhooks
from reconciler.secretsources import SecretSources


@dataclass(frozen=True)
class Snapshot:
    """One applied configuration: immutable, shared by every thread until the next swap."""

    table: RoutingTable
    secrets: Mapping[SecretRef, str] = field(repr=False)
    revision: str
    git_commit: str | None = None
    #: Secret references that could not be resolved at load, with the reason (never a value).
    secret_errors: Mapping[SecretRef, str] = field(default_factory=dict)

    def secret(self, ref: SecretRef) -> str:
        """The resolved value; SecretError when it could not be resolved at load."""
        try:
            return self.secrets[ref]
        except KeyError:
            raise SecretError(self.secret_errors.get(ref, f"secret {ref} was not resolved")) from None

    def webhook(self, name: str) -> Webhook | None:
        return self.table.get(name)


@dataclass(frozen=True)
class LoadAttempt:
    """The result of one (re)load: a snapshot when the tree is fully valid, else the problems."""

    revision: str
    snapshot: Snapshot | None
    diagnostics: tuple[Diagnostic, ...]

    @property
    def ok(self) -> bool:
        return self.snapshot is not None


def resolve_refs(
    refs: Iterable[SecretRef], environ: Mapping[str, str], sources: SecretSources
) -> tuple[dict[SecretRef, str], dict[SecretRef, str]]:
    """Resolve each reference afresh (a rotated secret file is read again): (values, reasons of failures).

    An unresolvable secret does not block the table (one team's missing secret must not freeze every other
    team's changes): the webhooks using it fail their attempts with the reason, and are retried, until a
    reload resolves it. Errors name the reference, never a value.
    """
    values: dict[SecretRef, str] = {}
    errors: dict[SecretRef, str] = {}
    for ref in refs:
        try:
            values[ref] = resolve_secret(ref, environ, sources)
        except SecretError as exc:
            errors[ref] = str(exc)
    return values, errors


class ConfigSource:
    """Loads ``--config DIR`` incrementally: only changed files are parsed again, the routing table is
    patched from the previous one, and the secret references in use are counted as webhooks change (their
    values are still read afresh on every load, and ``refresh_secrets`` reads again the files that changed
    between loads)."""

    def __init__(
        self,
        directory: str | Path,
        environ: Mapping[str, str] | None = None,
        sources: SecretSources | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.directory = Path(directory)
        self._loader = TreeLoader(self.directory, limits)
        self._environ = environ if environ is not None else os.environ
        self.sources = sources if sources is not None else SecretSources.build(environ=self._environ)
        self._table: RoutingTable | None = None  # the last table built; the next is derived from it
        self._refs: Counter[SecretRef] = Counter()  # secret references of that table's webhooks
        #: The files of those references as they were when last read (None: refused or absent).
        self._signatures: dict[SecretRef, Signature | None] = {}
        self._cursor = 0  # where the next refresh_secrets starts looking, when it looks at a part only

    def load(self, changed: Collection[str] | None = None) -> LoadAttempt:
        """Load the tree; ``changed``: the paths (relative to the directory) a watcher saw change since
        the last load, or None to look at every file."""
        from reconciler.gitrev import git_commit  # git is optional: only for revision reporting

        tree = self._loader.load(changed)
        if tree.error_count:
            return LoadAttempt(tree.revision, None, tree.diagnostics)
        previous, table = self._table, tree.table(self._table)
        self._refs = _count_refs(self._refs, previous.webhooks if previous else {}, table.webhooks)
        self._table = table
        self._signatures = {}  # only the references in use are watched
        secrets, secret_errors = self._read_secrets(self._refs)
        snapshot = Snapshot(table, secrets, tree.revision, git_commit(self.directory), secret_errors)
        return LoadAttempt(tree.revision, snapshot, tree.diagnostics)

    def refresh_secrets(self, snapshot: Snapshot, limit: int = 1000) -> Snapshot | None:
        """``snapshot`` with its file secrets read again, if any referenced file changed since it was read
        (one stat per file); None when none did. The table and revision stay the same.

        At most ``limit`` files are looked at per call, taking turns, so that a tree with thousands of
        secret files costs the calling loop a bounded time (and each file is looked at every
        ``len / limit`` calls).
        """
        refs = list(self._signatures)
        if len(refs) > limit:
            start = self._cursor % len(refs)
            refs = (refs[start:] + refs[:start])[:limit]
            self._cursor = start + limit
        changed = [ref for ref in refs if file_signature(ref, self.sources) != self._signatures[ref]]
        if not changed:
            return None
        values, errors = self._read_secrets(changed)
        secrets = {r: v for r, v in snapshot.secrets.items() if r not in errors} | values
        secret_errors = {r: e for r, e in snapshot.secret_errors.items() if r not in values} | errors
        if secrets == snapshot.secrets and secret_errors == snapshot.secret_errors:
            return None  # touched, not changed (or still refused)
        return dataclasses.replace(snapshot, secrets=secrets, secret_errors=secret_errors)

    def _read_secrets(self, refs: Iterable[SecretRef]) -> tuple[dict[SecretRef, str], dict[SecretRef, str]]:
        """Resolve ``refs``, noting each file's signature first (a change while reading is seen next time)."""
        refs = list(refs)
        for ref in refs:
            if ref.source == "file":
                self._signatures[ref] = file_signature(ref, self.sources)
        return resolve_refs(refs, self._environ, self.sources)


def _count_refs(
    counts: Counter[SecretRef], before: Mapping[str, Webhook], after: Mapping[str, Webhook]
) -> Counter[SecretRef]:
    """``counts`` (of the references of ``before``) brought in line with ``after``; webhooks that are the
    same object in both (the loader reuses unchanged ones) are skipped."""
    counts = Counter(counts)
    removed, added = changed_webhooks(before, after)
    for hook in removed:
        counts.subtract(hook.secret_refs())
    for hook in added:
        counts.update(hook.secret_refs())
    return +counts


def describe_failure(attempt: LoadAttempt, limit: int = 20) -> str:
    """A multi-line description of why a load failed: ``file:line:col: error[rule]: message`` lines."""
    lines = [
        f"{d.file}:{d.line}:{d.column}: {d.severity.value}[{d.rule}]: {d.message}"
        for d in attempt.diagnostics
        if d.is_error
    ][:limit]
    return "\n".join(lines)


def initial_snapshot(source: ConfigSource) -> Snapshot:
    """Load the config at start-up; a broken tree at start-up is fatal (there is no last good table)."""
    attempt = source.load()
    if attempt.snapshot is None:
        raise ConfigError(f"cannot load {source.directory}:\n{describe_failure(attempt)}")
    return attempt.snapshot
