"""Symlinks in a config tree: links that resolve inside it work, links that resolve outside are never read."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from reconciler.loader import TreeLoader, TreeResult, load_tree

RECONCILE = str(Path(sys.executable).parent / "reconcile")
SECRET_LINE = "root:TOPSECRET-CONTENT:0:0"  # what an outside file holds; it must never be quoted


def hook(name: str, event: str = "package.created") -> str:
    return (
        f"apiVersion: webhooks/v1\nkind: Webhook\nmetadata:\n  name: {name}\nspec:\n"
        f"  target_url: https://erp.example.com/{name}\n  event_type: {event}\n"
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    path = tmp_path / "webhooks.d"
    path.mkdir()
    (path / "good.yaml").write_text(hook("good"))
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A file outside the tree whose content would be quoted by a YAML error if it were ever parsed."""
    path = tmp_path / "elsewhere" / "passwd"
    path.parent.mkdir()
    path.write_text(f"{SECRET_LINE}\n  : [\n")
    return path


def rules_at(tree: TreeResult) -> list[tuple[str, str, int, int]]:
    return [(Path(d.file).name, d.rule, d.line, d.column) for d in tree.diagnostics]


def load_in_thread(directory: Path, timeout: float = 20.0) -> TreeResult:
    """load_tree, failing (instead of hanging the suite) if it blocks, e.g. opening a FIFO."""
    results: list[TreeResult] = []
    worker = threading.Thread(target=lambda: results.append(load_tree(directory)), daemon=True)
    worker.start()
    worker.join(timeout)
    assert results, "load_tree blocked: it opened a file it must not open"
    return results[0]


def test_a_file_link_outside_the_tree_is_refused_and_never_read(tree: Path, outside: Path) -> None:
    """x.yaml -> a file outside: a symlink-outside error at x.yaml:1:1; the content is never quoted."""
    (tree / "passwd.yaml").symlink_to(outside)
    result = load_tree(tree)
    assert rules_at(result) == [("passwd.yaml", "symlink-outside", 1, 1)]
    assert "TOPSECRET" not in repr(result)
    assert [h.name for h in result.webhooks] == ["good"]


def test_the_target_of_an_outside_link_is_not_even_opened(tree: Path, tmp_path: Path) -> None:
    """The outside target is a FIFO: opening it would block, so a load that returns never opened it."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tree / "fifo.yaml").symlink_to(fifo)
    try:
        result = load_in_thread(tree)
    finally:
        # Release a loader stuck in open() (a regression), so the suite can go on.
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK) if _has_reader(fifo) else None
        if fd is not None:
            os.close(fd)
    assert rules_at(result) == [("fifo.yaml", "symlink-outside", 1, 1)]


def _has_reader(fifo: Path) -> bool:
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        return False
    return True


def test_a_directory_link_outside_the_tree_is_refused_and_not_walked(tree: Path, outside: Path) -> None:
    """A linked directory resolving outside is refused as a whole; its YAML files are not loaded."""
    (outside.parent / "other.yaml").write_text(hook("other"))
    (tree / "team").symlink_to(outside.parent, target_is_directory=True)
    result = load_tree(tree)
    assert rules_at(result) == [("team", "symlink-outside", 1, 1)]
    assert [h.name for h in result.webhooks] == ["good"]


def test_a_dangling_outside_link_is_refused(tree: Path, tmp_path: Path) -> None:
    """A link to a missing file outside the tree is refused too (it may appear later)."""
    (tree / "later.yaml").symlink_to(tmp_path / "missing.yaml")
    assert rules_at(load_tree(tree)) == [("later.yaml", "symlink-outside", 1, 1)]


def test_an_outside_link_with_a_non_yaml_name_is_ignored(tree: Path, outside: Path) -> None:
    """Links that would not be loaded anyway (notes.txt) are neither followed nor reported."""
    (tree / "notes.txt").symlink_to(outside)
    result = load_tree(tree)
    assert result.valid and rules_at(result) == []


def test_a_configmap_layout_of_links_inside_the_tree_loads(tree: Path) -> None:
    """DIR/x.yaml -> ..data/x.yaml -> ..2026_12_01/x.yaml (a Kubernetes ConfigMap) loads, and a swap of
    ..data to a new version is picked up by the next load."""
    (tree / "..2026_12_01").mkdir()
    (tree / "..2026_12_01" / "x.yaml").write_text(hook("x"))
    (tree / "..data").symlink_to("..2026_12_01", target_is_directory=True)
    (tree / "x.yaml").symlink_to("..data/x.yaml")
    loader = TreeLoader(tree)
    first = loader.load()
    assert first.valid and [h.name for h in first.webhooks] == ["good", "x"]
    (tree / "..2026_12_02").mkdir()
    (tree / "..2026_12_02" / "x.yaml").write_text(hook("x", "shipment.created"))
    (tree / "..data_tmp").symlink_to("..2026_12_02", target_is_directory=True)
    os.replace(tree / "..data_tmp", tree / "..data")  # the atomic swap kubelet does
    second = loader.load([])
    assert second.valid
    assert {h.name: h.event_types for h in second.webhooks}["x"] == ("shipment.created",)


def test_the_config_directory_itself_may_be_a_symlink(tmp_path: Path, tree: Path) -> None:
    """With the root a link, links inside that name the real directory's files are inside."""
    root = tmp_path / "current"
    root.symlink_to(tree, target_is_directory=True)
    (tree / "alias.yaml").symlink_to(tree / "good.yaml")  # absolute, through the real path
    (tree / "sub").mkdir()
    (tree / "sub" / "via-root.yaml").symlink_to(root / "good.yaml")  # absolute, through the root link
    result = load_tree(root)
    assert [Path(f.path).relative_to(root).as_posix() for f in result.files] == [
        "alias.yaml",
        "good.yaml",
        "sub/via-root.yaml",
    ]
    assert {d.rule for d in result.diagnostics} == {"duplicate-name"}  # the same webhook, three times


def test_a_relative_link_that_leaves_and_reenters_the_tree_is_inside(tree: Path) -> None:
    """`../webhooks.d/good.yaml` resolves inside: judged by where it resolves, not by how it is spelled."""
    (tree / "sub").mkdir()
    (tree / "sub" / "a.yaml").write_text(hook("a"))
    (tree / "b.yaml").symlink_to("../webhooks.d/sub/a.yaml")
    result = load_tree(tree)
    assert [Path(f.path).name for f in result.files] == ["b.yaml", "good.yaml", "a.yaml"]
    assert {d.rule for d in result.diagnostics} == {"duplicate-name"}  # b.yaml is a.yaml


def test_a_link_added_after_a_clean_scan_is_refused_on_a_watched_reload(tree: Path, outside: Path) -> None:
    """The watcher's fast path (only the changed paths) also refuses a new outside link."""
    loader = TreeLoader(tree)
    assert loader.load().valid
    (tree / "evil.yaml").symlink_to(outside)
    result = loader.load(["evil.yaml"])
    assert rules_at(result) == [("evil.yaml", "symlink-outside", 1, 1)]


def test_reconcile_check_refuses_the_link_without_quoting_the_target(tree: Path, outside: Path) -> None:
    """`reconcile --check` exits 1 with the located symlink-outside error in every format; the outside
    file's content appears in no output."""
    (tree / "passwd.yaml").symlink_to(outside)
    for fmt in ("text", "json", "github"):
        run = subprocess.run(
            [RECONCILE, "--check", "--format", fmt, str(tree)], capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 1, run.stderr
        assert "TOPSECRET" not in run.stdout + run.stderr
        assert "symlink-outside" in run.stdout
    text = subprocess.run([RECONCILE, "--check", str(tree)], capture_output=True, text=True, timeout=60)
    assert f"{tree}/passwd.yaml:1:1: error[symlink-outside]" in text.stdout
