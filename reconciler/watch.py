"""Watching a webhooks directory (``reconcile --watch``, ``dispatch run``): the only module that talks to
watchdog.

File events (inotify through watchdog, or watchdog's polling observer where inotify is unavailable) only
mark the tree dirty; a debounce thread calls ``on_change`` once a burst has been quiet for the debounce
interval. A directory that is a symlink swapped atomically (a Kubernetes ConfigMap, git-sync) is followed:
the link's target is checked on every tick, and a new target re-arms the observer and triggers a reload.

The watcher also notes which files the events named, so that a reload can look at only those
(``take_changes``). Whenever that list may be incomplete it says "everything" instead: directory events
(created, deleted, moved), the polling observer, a swapped link target, a burst of more than
``_MAX_EVENTS`` events (the kernel drops events past its queue without telling watchdog's handlers), and
at least every ``full_rescan_seconds`` as a safety net.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

_default_log = logging.getLogger("reconciler.watch")
_MAX_EVENTS = 4096  # more in one batch: look at everything (and keep the set of paths small)


def fields(**values: object) -> dict[str, object]:
    """``extra=`` in the dispatcher's structured-log convention (plain loggers ignore it)."""
    return {"fields": values}


class _Mark(FileSystemEventHandler):
    def __init__(self, mark: Callable[[FileSystemEvent], None]) -> None:
        self._mark = mark

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return  # reads (our own loader's included) change nothing
        self._mark(event)


class ConfigWatcher:
    """Calls ``on_change`` after changes under ``directory`` settle. ``start()``, then ``close()``."""

    def __init__(
        self,
        directory: str | Path,
        on_change: Callable[[], None],
        *,
        debounce_seconds: float = 0.2,
        link_check_seconds: float = 0.5,
        polling: bool = False,
        full_rescan_seconds: float = 60.0,
        log: logging.Logger = _default_log,
    ) -> None:
        self.directory = Path(directory)
        self._on_change = on_change
        self._debounce = debounce_seconds
        self._link_check = link_check_seconds
        self._polling = polling
        self._log = log
        self._cond = threading.Condition()
        self._dirty_at: float | None = None
        self._full_rescan = full_rescan_seconds
        self._changed: set[str] | None = None  # paths seen since the last take; None: everything
        self._events = 0
        self._exact = False  # whether the observer reports every change (inotify), not a polled diff
        self._last_full = time.monotonic()
        self._closed = False
        self._observer: BaseObserver | None = None
        self._target = self._resolve()
        self._thread = threading.Thread(target=self._run, name="dispatch-watch", daemon=True)

    def _resolve(self) -> str:
        return os.path.realpath(self.directory)

    def start(self) -> None:
        self._observer = self._observe()
        self._thread.start()

    def _observe(self) -> BaseObserver:
        handler = _Mark(self._on_event)
        observer: BaseObserver = PollingObserver(timeout=1.0) if self._polling else Observer()
        try:
            observer.schedule(handler, self._target, recursive=True)
            observer.start()
        except OSError as exc:
            if self._polling:
                raise
            # e.g. inotify watch limit reached: fall back to polling rather than not watching at all
            self._log.warning("watch.polling_fallback", extra=fields(error=str(exc)))
            observer = PollingObserver(timeout=1.0)
            observer.schedule(handler, self._target, recursive=True)
            observer.start()
        self._exact = not isinstance(observer, PollingObserver)
        self._log.info(
            "watch.started",
            extra=fields(
                directory=str(self.directory), target=self._target, observer=type(observer).__name__
            ),
        )
        return observer

    def mark(self) -> None:
        """Something changed, no telling what: (re)start the debounce interval; the next reload looks at
        every file."""
        with self._cond:
            self._changed = None
            self._events = _MAX_EVENTS
            self._dirty_at = time.monotonic()
            self._cond.notify()

    def _on_event(self, event: FileSystemEvent) -> None:
        with self._cond:
            self._note(event)
            self._dirty_at = time.monotonic()
            self._cond.notify()

    def _note(self, event: FileSystemEvent) -> None:
        """Add the paths ``event`` names to the changes (or give up on listing them)."""
        self._events += 1
        if self._changed is None or self._events > _MAX_EVENTS or not self._exact:
            self._changed = None
            return
        if event.is_directory:
            if event.event_type != "modified":  # a listing changing comes with its entries' own events
                self._changed = None
            return
        for path in (event.src_path, getattr(event, "dest_path", "")):
            if not path:
                continue
            relative = os.path.relpath(os.fsdecode(path), self._target)
            if relative == os.curdir or relative.startswith(os.pardir):
                self._changed = None
                return
            self._changed.add(relative.replace(os.sep, "/"))

    def take_changes(self) -> frozenset[str] | None:
        """The paths (relative to the directory, ``/``-separated) events named since the last call, or None
        when the next load must look at every file (see the module docstring)."""
        with self._cond:
            changed, now = self._changed, time.monotonic()
            if changed is not None and now - self._last_full >= self._full_rescan:
                changed = None
            if changed is None:
                self._last_full = now
            self._changed, self._events = set(), 0
            return frozenset(changed) if changed is not None else None

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                if self._dirty_at is None:
                    self._cond.wait(self._link_check)
                else:
                    quiet_for = time.monotonic() - self._dirty_at
                    if quiet_for < self._debounce:
                        self._cond.wait(self._debounce - quiet_for)
                if self._closed:
                    return
                fire = self._dirty_at is not None and time.monotonic() - self._dirty_at >= self._debounce
                if fire:
                    self._dirty_at = None
            self._check_link()
            if fire:
                try:
                    self._on_change()
                except Exception:
                    self._log.exception("watch.reload_failed")

    def _check_link(self) -> None:
        target = self._resolve()
        if target == self._target:
            return
        self._log.info("watch.target_changed", extra=fields(old=self._target, new=target))
        self._target = target
        old = self._observer
        if old is not None:
            old.stop()
        try:
            self._observer = self._observe()
        except OSError as exc:
            self._log.error("watch.rearm_failed", extra=fields(error=str(exc)))
            self._observer = None
        self.mark()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        if self._thread.is_alive():
            self._thread.join(timeout=5)
