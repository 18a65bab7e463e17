"""Live reloads survive a load that raises: a failed reload with its reason, the last good table kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatcher.config import ConfigSource
from dispatcher.live import LiveConfig
from dispatcher.metrics import Metrics
from dispatcher.store.memory import MemoryStore
from reconciler import loader

HOOK = (
    "apiVersion: webhooks/v1\nkind: Webhook\nmetadata:\n  name: {name}\nspec:\n"
    "  target_url: https://erp.example.com/{name}\n  event_type: package.created\n"
)


def test_a_load_that_raises_is_a_failed_reload_and_the_next_good_one_applies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected exception inside a load fails that reload (status and metric say so, with the reason),
    keeps the active table, and a later reload of a good tree applies normally."""
    (tmp_path / "a.yaml").write_text(HOOK.format(name="a"))
    source = ConfigSource(tmp_path, {})
    initial = source.load().snapshot
    assert initial is not None
    metrics = Metrics()
    live = LiveConfig(source, initial, MemoryStore(), metrics, clock=lambda: 1000.0)
    (tmp_path / "b.yaml").write_text(HOOK.format(name="b"))

    def explode(path: Path, display: str, *args: object) -> object:
        raise RuntimeError("simulated bug in a load")

    monkeypatch.setattr(loader, "load_file", explode)
    assert live.reload("SIGHUP") is False
    status = live.status
    assert status.last_reload_ok is False
    assert status.active_revision == initial.revision
    assert status.last_error is not None and "RuntimeError: simulated bug in a load" in status.last_error
    assert live.current() is initial
    assert metrics.registry.get_sample_value("config_last_reload_successful") == 0
    assert metrics.registry.get_sample_value("dispatch_config_reloads_total", {"result": "failure"}) == 1

    monkeypatch.undo()
    assert live.reload("SIGHUP") is True  # the loader's state was not left half-updated
    assert sorted(live.current().table.webhooks) == ["a", "b"]
    assert live.status.last_reload_ok is True
