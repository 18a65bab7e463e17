"""The dispatcher's config source: incremental reloads equal fresh loads, and secrets are read afresh."""

from __future__ import annotations

import os
from pathlib import Path

from dispatcher.config import ConfigSource, LoadAttempt
from tests.reconciler.test_loader import WEBHOOK as PLAIN_WEBHOOK

WEBHOOK = PLAIN_WEBHOOK + "  secret_key: {secret}\n"
EVENTS = ("package.created", "package.status.shipped", "shipment.created")


def write(root: Path, name: str, event: str = "package.created", secret: str = "{env: HOOK_SECRET}") -> str:
    root.mkdir(parents=True, exist_ok=True)
    temporary = root / f".{name}.yaml.tmp"
    temporary.write_text(WEBHOOK.format(name=name, event=event, secret=secret), encoding="utf-8")
    os.replace(temporary, root / f"{name}.yaml")
    return f"{name}.yaml"


def routes(attempt: LoadAttempt) -> dict[str, list[str]]:
    assert attempt.snapshot is not None
    return {e: [h.name for h in attempt.snapshot.table.route(e)] for e in EVENTS}


def assert_same(attempt: LoadAttempt, fresh: LoadAttempt) -> None:
    assert attempt.snapshot is not None and fresh.snapshot is not None
    assert attempt.revision == fresh.revision
    assert dict(attempt.snapshot.table.webhooks) == dict(fresh.snapshot.table.webhooks)
    assert routes(attempt) == routes(fresh)
    assert attempt.snapshot.secrets == fresh.snapshot.secrets
    assert attempt.snapshot.secret_errors == fresh.snapshot.secret_errors


def test_a_reload_after_one_change_equals_a_fresh_load(tmp_path: Path) -> None:
    """Editing, adding and deleting files between reloads gives the table, revision and secrets of a fresh
    load, whether the source is told the changed paths or scans everything."""
    root, environ = tmp_path / "webhooks.d", {"HOOK_SECRET": "s", "OTHER": "o"}
    for i in range(5):
        write(root, f"hook-{i}", EVENTS[i % 3])
    told, scanning = ConfigSource(root, environ), ConfigSource(root, environ)
    told.load(), scanning.load()
    steps = [
        lambda: [write(root, "hook-1", "shipment.created", "{env: OTHER}")],
        lambda: [write(root, "hook-9", "package.*.*")],
        lambda: [(root / "hook-2.yaml").unlink() or "hook-2.yaml"],
        lambda: [write(root, "hook-1", "package.created", "{env: MISSING}")],
    ]
    for step in steps:
        changed = step()
        fresh = ConfigSource(root, environ).load()
        assert_same(told.load(changed), fresh)
        assert_same(scanning.load(), fresh)


def test_a_rotated_secret_file_is_read_at_the_next_reload(tmp_path: Path) -> None:
    """A secret file rewritten outside the tree takes effect at the next reload, even one told no change."""
    secret = tmp_path / "secret"
    secret.write_text("first\n", encoding="utf-8")
    root = tmp_path / "webhooks.d"
    write(root, "hook", secret=f"{{file: {secret}}}")
    source = ConfigSource(root, {})
    first = source.load().snapshot
    assert first is not None and set(first.secrets.values()) == {"first"}
    secret.write_text("second\n", encoding="utf-8")
    again = source.load([]).snapshot
    assert again is not None and set(again.secrets.values()) == {"second"}
    secret.unlink()
    gone = source.load([]).snapshot
    assert gone is not None and gone.secrets == {} and len(gone.secret_errors) == 1


def test_an_invalid_change_is_not_a_snapshot_and_the_next_good_one_is(tmp_path: Path) -> None:
    """A broken file gives no snapshot; fixing it gives the same snapshot as a fresh load."""
    root = tmp_path / "webhooks.d"
    for i in range(3):
        write(root, f"hook-{i}")
    source = ConfigSource(root, {"HOOK_SECRET": "s"})
    source.load()
    (root / "hook-1.yaml").write_text("kind: [Webhook\n", encoding="utf-8")
    broken = source.load(["hook-1.yaml"])
    assert broken.snapshot is None and any(d.file.endswith("hook-1.yaml") for d in broken.diagnostics)
    changed = [write(root, "hook-1", "shipment.created")]
    assert_same(source.load(changed), ConfigSource(root, {"HOOK_SECRET": "s"}).load())
