"""A .yaml name that is not a regular file (a FIFO, a socket) is a located error and is never opened, in
``load_tree``, ``reconcile --check`` and the dispatcher's reload (which keeps its last good table)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher.config import ConfigSource
from dispatcher.live import LiveConfig
from dispatcher.metrics import Metrics
from dispatcher.store.memory import MemoryStore
from reconciler.loader import TreeLoader
from tests.reconciler.test_symlinks import RECONCILE, hook, load_in_thread, rules_at
from tests.reconciler.test_symlinks import tree as tree  # the fixture: webhooks.d/ holding good.yaml


@pytest.fixture
def fifos() -> Iterator[list[Path]]:
    """FIFOs made by a test; at the end each is opened for writing once, which releases a reader stuck in
    open() (a regression) so the suite can go on."""
    made: list[Path] = []
    yield made
    for fifo in made:
        with contextlib.suppress(OSError):  # ENXIO: no reader, nothing was stuck
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def _fifo(path: Path, fifos: list[Path]) -> Path:
    os.mkfifo(path)
    fifos.append(path)
    return path


def test_a_fifo_named_yaml_is_a_located_error_and_never_opened(tree: Path, fifos: list[Path]) -> None:
    """hooks.yaml as a FIFO: a not-a-regular-file error at hooks.yaml:1:1 naming what it is; the load
    returns (it never opened the FIFO), the other files still load, and the tree is not valid."""
    _fifo(tree / "hooks.yaml", fifos)
    result = load_in_thread(tree)
    assert rules_at(result) == [("hooks.yaml", "not-a-regular-file", 1, 1)]
    [problem] = result.diagnostics
    assert problem.message.startswith("a FIFO, not a regular file")
    assert [h.name for h in result.webhooks] == ["good"]
    assert not result.valid


def test_a_link_inside_the_tree_to_a_fifo_and_a_socket_are_errors_too(tree: Path, fifos: list[Path]) -> None:
    """A link resolving inside the tree to a FIFO, and a Unix socket named .yml, are each reported at their
    own name."""
    pipes = tree / "pipes"
    pipes.mkdir()
    _fifo(pipes / "p", fifos)
    (tree / "linked.yaml").symlink_to(pipes / "p")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(tree / "sock.yml"))
        result = load_in_thread(tree)
    assert sorted(rules_at(result)) == [
        ("linked.yaml", "not-a-regular-file", 1, 1),
        ("sock.yml", "not-a-regular-file", 1, 1),
    ]
    messages = sorted(d.message for d in result.diagnostics)
    assert messages[0].startswith("a FIFO") and messages[1].startswith("a socket")


def test_a_fifo_without_a_yaml_name_is_ignored(tree: Path, fifos: list[Path]) -> None:
    """Only names the loader would load are reported: a FIFO called notes is neither opened nor reported."""
    _fifo(tree / "notes", fifos)
    result = load_in_thread(tree)
    assert result.valid and rules_at(result) == []


def test_a_fifo_appearing_between_loads_is_reported_by_the_incremental_load(
    tree: Path, fifos: list[Path]
) -> None:
    """A reload given the changed path (as the watcher gives it) reports a FIFO that appeared since."""
    loader = TreeLoader(tree)
    assert loader.load().valid
    _fifo(tree / "new.yaml", fifos)
    results: list[object] = []
    worker = threading.Thread(target=lambda: results.append(loader.load(["new.yaml"])), daemon=True)
    worker.start()
    worker.join(20)
    assert results, "the incremental load blocked on the FIFO"
    assert rules_at(results[0]) == [("new.yaml", "not-a-regular-file", 1, 1)]  # type: ignore[arg-type]


def test_reconcile_check_fails_with_the_located_error(tree: Path, fifos: list[Path]) -> None:
    """`reconcile --check` exits 1 and prints the error at the FIFO's path, in text and JSON."""
    _fifo(tree / "hooks.yaml", fifos)
    text = subprocess.run([RECONCILE, "--check", str(tree)], capture_output=True, text=True, timeout=60)
    assert text.returncode == 1, text.stderr
    assert f"{tree}/hooks.yaml:1:1: error[not-a-regular-file]" in text.stdout
    as_json = subprocess.run(
        [RECONCILE, "--check", "--format", "json", str(tree)], capture_output=True, text=True, timeout=60
    )
    assert as_json.returncode == 1 and '"not-a-regular-file"' in as_json.stdout


def test_the_dispatchers_reload_fails_and_keeps_the_last_good_table(tree: Path, fifos: list[Path]) -> None:
    """A FIFO appearing in --config fails the reload with the located reason, and the active table stays
    the last good one."""
    source = ConfigSource(tree, {})
    initial = source.load().snapshot
    assert initial is not None
    metrics = Metrics()
    live = LiveConfig(source, initial, MemoryStore(), metrics, clock=lambda: 1000.0)
    (tree / "other.yaml").write_text(hook("other"))
    _fifo(tree / "hooks.yaml", fifos)
    outcome: list[bool] = []
    worker = threading.Thread(target=lambda: outcome.append(live.reload("SIGHUP")), daemon=True)
    worker.start()
    worker.join(20)
    assert outcome == [False], "the reload blocked on the FIFO or applied the tree"
    assert live.current() is initial and sorted(live.current().table.webhooks) == ["good"]
    error = live.status.last_error
    assert error is not None and "hooks.yaml" in error and "not-a-regular-file" in error
    assert metrics.registry.get_sample_value("dispatch_config_reloads_total", {"result": "failure"}) == 1
