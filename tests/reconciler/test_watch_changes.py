"""``ConfigWatcher.take_changes``: which paths changed, or "everything" when it cannot be sure."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.watch import ConfigWatcher


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[Path, ConfigWatcher, threading.Event]]:
    root = tmp_path / "webhooks.d"
    (root / "team").mkdir(parents=True)
    (root / "a.yaml").write_text("a\n", encoding="utf-8")
    fired = threading.Event()
    watcher = ConfigWatcher(root, fired.set, debounce_seconds=0.05)
    watcher.start()
    assert watcher.take_changes() is None  # nothing is known about the time before start
    try:
        yield root, watcher, fired
    finally:
        watcher.close()


def settle(
    watcher: ConfigWatcher, fired: threading.Event, expected: frozenset[str] | None = None
) -> frozenset[str] | None:
    """The changes reported once the watcher fired, gathered until they are ``expected`` (None: until one
    take says "everything") or 10 s pass: trailing events of one burst may come after the first report."""
    assert fired.wait(10), "no change reported"
    fired.clear()
    seen: set[str] = set()
    deadline = time.monotonic() + 10
    while (changed := watcher.take_changes()) is not None:
        seen |= changed
        if seen == expected or time.monotonic() > deadline:
            return frozenset(seen)
        fired.wait(0.01)  # a poll interval; the loop ends on what was taken, not on time
    return None


def test_an_atomic_save_names_the_file_and_its_temporary(
    watched: tuple[Path, ConfigWatcher, threading.Event],
) -> None:
    """An editor's save (temporary file renamed over the target) reports both paths, relative."""
    root, watcher, fired = watched
    (root / "team" / ".b.yaml.tmp").write_text("b\n", encoding="utf-8")
    os.replace(root / "team" / ".b.yaml.tmp", root / "team" / "b.yaml")
    (root / "a.yaml").unlink()
    expected = frozenset({"team/.b.yaml.tmp", "team/b.yaml", "a.yaml"})
    assert settle(watcher, fired, expected) == expected
    assert watcher.take_changes() == frozenset()


def test_a_new_directory_means_everything(watched: tuple[Path, ConfigWatcher, threading.Event]) -> None:
    """A directory created (or deleted, or moved) cannot be told as a list of files: None."""
    root, watcher, fired = watched
    (root / "new").mkdir()
    assert settle(watcher, fired) is None


def test_mark_means_everything(watched: tuple[Path, ConfigWatcher, threading.Event]) -> None:
    """An explicit mark (a swapped link target, a caller's request) asks for a full look."""
    _root, watcher, fired = watched
    watcher.mark()
    assert settle(watcher, fired) is None


def test_a_full_look_is_asked_for_at_least_every_interval(tmp_path: Path) -> None:
    """Past ``full_rescan_seconds`` since the last full look, the changes say everything."""
    watcher = ConfigWatcher(tmp_path, lambda: None, full_rescan_seconds=0.0)
    watcher.start()
    try:
        watcher.take_changes()
        assert watcher.take_changes() is None
    finally:
        watcher.close()


def test_the_polling_observer_always_means_everything(tmp_path: Path) -> None:
    """A polled diff may miss a change within one poll: every reload looks at everything."""
    fired = threading.Event()
    watcher = ConfigWatcher(tmp_path, fired.set, debounce_seconds=0.05, polling=True)
    watcher.start()
    try:
        watcher.take_changes()
        (tmp_path / "a.yaml").write_text("a\n", encoding="utf-8")
        assert settle(watcher, fired) is None
    finally:
        watcher.close()
