"""Live configuration: the current snapshot, reloads that apply only fully valid trees, and revision status.

``reload()`` builds the new snapshot off to the side and swaps one reference; readers call ``current()`` and
keep the snapshot they got for the whole attempt. After a swap the store is brought in line with the new
table: deliveries of removed webhooks become dead (``webhook removed``), held deliveries of webhooks that are
active again are released.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from dispatcher.config import ConfigSource, LoadAttempt, Snapshot, describe_failure
from dispatcher.logs import fields, get_logger
from dispatcher.metrics import Metrics
from dispatcher.store.base import Store
from reconciler.model import Diagnostic, Severity

log = get_logger("config")


@dataclass(frozen=True)
class ReloadStatus:
    """What ``/status`` reports about configuration (Flux-style applied vs attempted)."""

    active_revision: str
    active_git_commit: str | None
    attempted_revision: str
    last_reload_ok: bool
    last_reload_at: float
    last_success_at: float
    last_error: str | None


class LiveConfig:
    def __init__(
        self,
        source: ConfigSource,
        initial: Snapshot,
        store: Store,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._source = source
        self._snapshot = initial
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self._lock = threading.Lock()  # one swap at a time; readers never take it
        now = clock()
        self._status = ReloadStatus(
            initial.revision, initial.git_commit, initial.revision, True, now, now, None
        )
        metrics.reload_successful.set(1)
        metrics.reload_success_time.set(now)
        self._count_webhooks(initial)

    def current(self) -> Snapshot:
        return self._snapshot

    @property
    def status(self) -> ReloadStatus:
        return self._status

    def reload(self, reason: str = "manual", changed: Collection[str] | None = None) -> bool:
        """Load the tree again and apply it if fully valid; returns whether it was applied.

        ``changed``: the paths a watcher saw change since the last reload (``ConfigWatcher.take_changes``),
        so that only they are looked at; None (SIGHUP, start-up) looks at every file.

        Never raises for what a load does: an unexpected exception inside it is a failed reload with the
        exception as its reason (the last good table stays, ``/status`` says so), not a dead process.
        """
        with self._lock:
            started = time.monotonic()
            try:
                attempt = self._source.load(changed)
            except Exception as exc:  # a bug in a load must neither pass for success nor kill the process
                attempt = _crashed_load(self._source, exc)
            now = self._clock()
            if attempt.snapshot is None:
                return self._reject(attempt, now, reason)
            old, new = self._snapshot, attempt.snapshot
            self._snapshot = new
            self._status = ReloadStatus(new.revision, new.git_commit, new.revision, True, now, now, None)
            self._metrics.reloads.labels("success").inc()
            self._metrics.reload_successful.set(1)
            self._metrics.reload_success_time.set(now)
            self._count_webhooks(new)
            revised = old.revision != new.revision
            if revised:
                self._sync_changes(old, new, now)
            log.info(
                "config.applied" if revised else "config.unchanged",
                extra=fields(
                    revision=new.revision,
                    git_commit=new.git_commit,
                    webhooks=len(new.table),
                    reason=reason,
                    took_ms=round((time.monotonic() - started) * 1000, 1),
                ),
            )
            return True

    def refresh_secrets(self) -> bool:
        """Swap in the current snapshot with its secret files read again if any of them changed (a
        rotation); returns whether it did. Call from the thread that reloads (the main loop)."""
        with self._lock:
            old = self._snapshot
            new = self._source.refresh_secrets(old)
            if new is None:
                return False
            self._snapshot = new
        rotated = sorted(str(r) for r, v in new.secrets.items() if old.secrets.get(r) != v)
        failing = sorted(str(r) for r in new.secret_errors.keys() - old.secret_errors.keys())
        # References only (names of files), never values.
        log.info("secrets.reread", extra=fields(rotated=rotated, failing=failing, revision=new.revision))
        return True

    def _reject(self, attempt: LoadAttempt, now: float, reason: str) -> bool:
        detail = describe_failure(attempt)
        self._status = ReloadStatus(
            self._status.active_revision,
            self._status.active_git_commit,
            attempt.revision,
            False,
            now,
            self._status.last_success_at,
            detail,
        )
        self._metrics.reloads.labels("failure").inc()
        self._metrics.reload_successful.set(0)
        log.error(
            "config.rejected",
            extra=fields(
                attempted_revision=attempt.revision,
                active_revision=self._status.active_revision,
                reason=reason,
                problems=detail,
            ),
        )
        return False

    def sync_store(self) -> None:
        """Bring the whole store in line with the current table (at start-up: the tree may have changed
        while no dispatcher ran). Scans every webhook with open deliveries."""
        snapshot, now = self._snapshot, self._clock()
        for name in self._store.open_webhooks():
            hook = snapshot.table.get(name)
            if hook is None:
                self._bury(name, now)
            elif hook.active:
                self._release(name, now)

    def _sync_changes(self, old: Snapshot, new: Snapshot, now: float) -> None:
        """After a swap: only the webhooks whose presence or status changed (cheap with 10,000 webhooks)."""
        before, after = old.table.webhooks, new.table.webhooks
        for name in before.keys() - after.keys():
            self._bury(name, now)
        for name, hook in after.items():
            previous = before.get(name)
            if hook.active and (previous is None or not previous.active):
                self._release(name, now)

    def _bury(self, name: str, now: float) -> None:
        n = self._store.bury_webhook(name, "webhook removed", now)
        if n:
            log.warning("deliveries.buried", extra=fields(webhook=name, count=n, reason="webhook removed"))

    def _release(self, name: str, now: float) -> None:
        n = self._store.release_held(name, now)
        if n:
            log.info("deliveries.released", extra=fields(webhook=name, count=n))

    def _count_webhooks(self, snapshot: Snapshot) -> None:
        active = sum(1 for h in snapshot.table.webhooks.values() if h.active)
        self._metrics.webhooks.labels("active").set(active)
        self._metrics.webhooks.labels("inactive").set(len(snapshot.table) - active)


def _crashed_load(source: ConfigSource, exc: Exception) -> LoadAttempt:
    """A failed attempt standing for a load that raised (no traceback: it could quote a file's content)."""
    message = f"internal error while loading: {type(exc).__name__}: {exc}"[:300]
    problem = Diagnostic(Severity.ERROR, "internal", message, str(source.directory), 1, 1)
    return LoadAttempt("unknown", None, (problem,))
