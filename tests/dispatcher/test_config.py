"""The dispatcher's config source: incremental reloads equal fresh loads, secrets are read afresh, only from
where the operator allows, and a rotated secret file is picked up without a reload."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from dispatcher.config import ConfigSource, LoadAttempt, Snapshot
from reconciler.secretsources import SecretSources
from tests.reconciler.test_loader import WEBHOOK as PLAIN_WEBHOOK

WEBHOOK = PLAIN_WEBHOOK + "  secret_key: {secret}\n"
EVENTS = ("package.created", "package.status.shipped", "shipment.created")


def write(
    root: Path, name: str, event: str = "package.created", secret: str = "{env: WEBHOOK_HOOK_SECRET}"
) -> str:
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
    root, environ = tmp_path / "webhooks.d", {"WEBHOOK_HOOK_SECRET": "s", "WEBHOOK_OTHER": "o"}
    for i in range(5):
        write(root, f"hook-{i}", EVENTS[i % 3])
    told, scanning = ConfigSource(root, environ), ConfigSource(root, environ)
    told.load(), scanning.load()

    def delete_hook_2() -> list[str]:
        (root / "hook-2.yaml").unlink()
        return ["hook-2.yaml"]

    steps: list[Callable[[], list[str]]] = [
        lambda: [write(root, "hook-1", "shipment.created", "{env: WEBHOOK_OTHER}")],
        lambda: [write(root, "hook-9", "package.*.*")],
        delete_hook_2,
        lambda: [write(root, "hook-1", "package.created", "{env: WEBHOOK_MISSING}")],
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
    source = ConfigSource(root, {}, SecretSources((str(tmp_path),)))
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
    source = ConfigSource(root, {"WEBHOOK_HOOK_SECRET": "s"})
    source.load()
    (root / "hook-1.yaml").write_text("kind: [Webhook\n", encoding="utf-8")
    broken = source.load(["hook-1.yaml"])
    assert broken.snapshot is None and any(d.file.endswith("hook-1.yaml") for d in broken.diagnostics)
    changed = [write(root, "hook-1", "shipment.created")]
    assert_same(source.load(changed), ConfigSource(root, {"WEBHOOK_HOOK_SECRET": "s"}).load())


def snapshot_of(source: ConfigSource) -> Snapshot:
    snapshot = source.load().snapshot
    assert snapshot is not None
    return snapshot


def test_the_default_policy_refuses_env_names_outside_webhook_star(tmp_path: Path) -> None:
    """Without options only WEBHOOK_* variables are read: another name is a secret error naming it."""
    root = tmp_path / "webhooks.d"
    write(root, "hook", secret="{env: AWS_SECRET_ACCESS_KEY}")
    snapshot = snapshot_of(ConfigSource(root, {"AWS_SECRET_ACCESS_KEY": "marker-aws"}))
    assert snapshot.secrets == {}
    (reason,) = snapshot.secret_errors.values()
    assert "AWS_SECRET_ACCESS_KEY" in reason and "refused" in reason and "marker-aws" not in reason


def test_a_rewritten_secret_file_is_picked_up_by_refresh_without_a_reload(tmp_path: Path) -> None:
    """refresh_secrets re-reads a file rewritten in place and keeps the table; without a change, nothing."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "hook").write_text("first\n", encoding="utf-8")
    root = tmp_path / "webhooks.d"
    write(root, "hook", secret="{file: hook}")
    source = ConfigSource(root, {}, SecretSources((str(secrets),)))
    first = snapshot_of(source)
    assert source.refresh_secrets(first) is None
    (secrets / "hook").write_text("second-longer\n", encoding="utf-8")
    second = source.refresh_secrets(first)
    assert second is not None and set(second.secrets.values()) == {"second-longer"}
    assert second.table is first.table and second.revision == first.revision
    assert source.refresh_secrets(second) is None


def test_a_kubernetes_style_symlink_swap_is_picked_up_by_refresh(tmp_path: Path) -> None:
    """Swapping the ``..data`` symlink to a new timestamped directory (same size, same name) is a rotation."""
    secrets = tmp_path / "secrets"
    for version, value in (("..v1", "aaaa"), ("..v2", "bbbb")):
        (secrets / version).mkdir(parents=True)
        (secrets / version / "hook").write_text(value, encoding="utf-8")
    (secrets / "..data").symlink_to("..v1")
    (secrets / "hook").symlink_to("..data/hook")
    root = tmp_path / "webhooks.d"
    write(root, "hook", secret="{file: hook}")
    source = ConfigSource(root, {}, SecretSources((str(secrets),)))
    first = snapshot_of(source)
    assert set(first.secrets.values()) == {"aaaa"}
    (secrets / "..data.tmp").symlink_to("..v2")
    os.replace(secrets / "..data.tmp", secrets / "..data")  # atomic, as kubelet does it
    second = source.refresh_secrets(first)
    assert second is not None and set(second.secrets.values()) == {"bbbb"}


def test_refresh_turns_a_removed_file_into_an_error_and_a_restored_one_back(tmp_path: Path) -> None:
    """A secret file that disappears becomes a secret error at the next refresh; when it returns, a value."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "hook").write_text("value\n", encoding="utf-8")
    root = tmp_path / "webhooks.d"
    write(root, "hook", secret="{file: hook}")
    source = ConfigSource(root, {}, SecretSources((str(secrets),)))
    first = snapshot_of(source)
    (secrets / "hook").unlink()
    gone = source.refresh_secrets(first)
    assert gone is not None and gone.secrets == {} and len(gone.secret_errors) == 1
    (secrets / "hook").write_text("again\n", encoding="utf-8")
    back = source.refresh_secrets(gone)
    assert back is not None and set(back.secrets.values()) == {"again"} and back.secret_errors == {}


def test_a_file_outside_the_secrets_directories_is_refused_at_load(tmp_path: Path) -> None:
    """An absolute path outside every secrets directory is a secret error, and stays one (unread) when the
    file changes."""
    outside = tmp_path / "outside"
    outside.write_text("marker-outside\n", encoding="utf-8")
    (tmp_path / "secrets").mkdir()
    root = tmp_path / "webhooks.d"
    write(root, "hook", secret=f"{{file: {outside}}}")
    source = ConfigSource(root, {}, SecretSources((str(tmp_path / "secrets"),)))
    snapshot = snapshot_of(source)
    (reason,) = snapshot.secret_errors.values()
    assert "refused" in reason and "marker-outside" not in reason
    outside.write_text("marker-outside-2\n", encoding="utf-8")
    assert source.refresh_secrets(snapshot) is None


def test_refresh_looks_at_a_bounded_number_of_files_per_call_taking_turns(tmp_path: Path) -> None:
    """With a limit below the number of secret files, successive refreshes look at every file in turn."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    root = tmp_path / "webhooks.d"
    for i in range(3):
        (secrets / f"s{i}").write_text(f"old-{i}\n", encoding="utf-8")
        write(root, f"hook-{i}", secret=f"{{file: s{i}}}")
    source = ConfigSource(root, {}, SecretSources((str(secrets),)))
    snapshot = snapshot_of(source)
    for i in range(3):
        (secrets / f"s{i}").write_text(f"new-{i}-rotated\n", encoding="utf-8")
    rotated = []
    for _ in range(3):
        refreshed = source.refresh_secrets(snapshot, limit=1)
        assert refreshed is not None  # each call finds the one changed file it looked at
        snapshot = refreshed
        rotated.append(sum(v.endswith("-rotated") for v in snapshot.secrets.values()))
    assert rotated == [1, 2, 3]
    assert source.refresh_secrets(snapshot, limit=1) is None
