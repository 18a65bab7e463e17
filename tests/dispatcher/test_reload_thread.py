"""Reloads run on one thread, the main loop's: file events and SIGHUP only set flags (issue #10)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dispatcher.app import Dispatcher, RunOptions, _Services


@dataclass
class FakeLive:
    """Records each reload and the thread it ran on; every reload makes a new revision."""

    reloads: list[tuple[str, frozenset[str] | None, str]] = field(default_factory=list)
    revision: int = 0

    def current(self) -> Any:
        return type("S", (), {"revision": f"rev-{self.revision}"})()

    def reload(self, reason: str, changed: frozenset[str] | None = None) -> bool:
        self.reloads.append((reason, changed, threading.current_thread().name))
        self.revision += 1
        return True

    def refresh_secrets(self) -> bool:
        return False


class FakeEngine:
    def __init__(self) -> None:
        self.scheduler = self
        self.wakes = 0

    def is_running(self) -> bool:
        return True

    def wake(self) -> None:
        self.wakes += 1


def _services(tmp_path: Path) -> tuple[Dispatcher, _Services, FakeLive, FakeEngine]:
    app = Dispatcher(RunOptions(config_dir=tmp_path, watch=False), environ={}, clock=lambda: 1000.0)
    live, engine = FakeLive(), FakeEngine()
    services = _Services(app, live, engine, None, None)  # type: ignore[arg-type]
    return app, services, live, engine


def test_a_file_event_only_sets_a_flag_and_the_main_loop_reloads(tmp_path: Path) -> None:
    """The watcher's callback, on its own thread, reloads nothing; the next turn of the main loop does,
    on the main thread, and wakes the scheduler for the new revision."""
    app, services, live, engine = _services(tmp_path)
    watcher_thread = threading.Thread(target=services._on_changes, name="dispatch-watch")
    watcher_thread.start()
    watcher_thread.join()
    assert live.reloads == [] and app.wakeup.is_set()
    services.tick(0)
    assert live.reloads == [("watch", None, threading.main_thread().name)]
    assert engine.wakes == 1 and not app.wakeup.is_set()
    services.tick(0)
    assert len(live.reloads) == 1  # the flag was taken: one reload per burst of events


def test_sighup_only_sets_a_flag_and_the_main_loop_reloads_every_file(tmp_path: Path) -> None:
    """SIGHUP's handler sets a flag; the main loop's next turn reloads with every file looked at."""
    app, services, live, _engine = _services(tmp_path)
    app._on_hup(1, None)
    assert live.reloads == [] and app.wakeup.is_set()
    services.tick(0)
    assert live.reloads == [("SIGHUP", None, threading.main_thread().name)]


def test_a_stop_request_is_seen_before_any_reload(tmp_path: Path) -> None:
    """With a stop and a reload both requested, the turn stops without reloading."""
    app, services, live, _engine = _services(tmp_path)
    app._on_hup(1, None)
    app.request_stop()
    services.tick(0)
    assert live.reloads == [] and app.stop_requested.is_set()
