"""Incremental reloads give exactly what a fresh load of the same files gives.

Every scenario loads a tree, changes it, and reloads it three ways: a fresh ``load_tree``, a reused loader
that scans everything, and a reused loader told only the paths that changed (what the watcher saw). All
three must agree on files, webhooks (with their sources), diagnostics, revision and routing table.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from reconciler import loader as loader_module
from reconciler.filecheck import LoadedFile
from reconciler.loader import TreeLoader, TreeResult, load_tree
from reconciler.treeindex import build_revision, build_tree_result
from tests.reconciler.test_loader import WEBHOOK

EVENT_TYPES = """\
apiVersion: webhooks/v1
kind: EventTypes
metadata: {name: extra}
spec:
  event_types: [{name: package.status.lost, description: The carrier lost the package.}]
"""

Change = Callable[[Path], list[str]]  # changes the tree, returns the relative paths it touched


def write(root: Path, relative: str, text: str) -> None:
    """Write like an editor: a hidden temporary file renamed over the target."""
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.tmp"
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def hook(root: Path, relative: str, name: str, event: str = "package.created") -> list[str]:
    write(root, relative, WEBHOOK.format(name=name, event=event))
    return [relative, str(Path(relative).parent / f".{Path(relative).name}.tmp").removeprefix("./")]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "webhooks.d"
    for i in range(6):
        hook(root, f"hook-{i}.yaml", f"hook-{i}")
    hook(root, "team/a.yaml", "team-a", "package.status.*")
    hook(root, "team/b.yaml", "team-b", "shipment.**")
    (root / "README.md").write_text("not a webhook\n", encoding="utf-8")
    return root


def assert_same(result: TreeResult, fresh: TreeResult) -> None:
    assert result == fresh
    assert [h.source for h in result.webhooks] == [h.source for h in fresh.webhooks]
    assert result.table().webhooks == fresh.table().webhooks


def reload_three_ways(root: Path, change: Change) -> TreeResult:
    scanning, told = TreeLoader(root), TreeLoader(root)
    first = scanning.load()
    assert_same(told.load(), first)
    changed = change(root)
    fresh = load_tree(root)
    assert_same(scanning.load(), fresh)
    assert_same(told.load(changed), fresh)
    assert_same(told.load([]), fresh)  # and nothing more changed since
    return fresh


def edit(root: Path) -> list[str]:
    return hook(root, "hook-3.yaml", "hook-3", "shipment.created")


def delete(root: Path) -> list[str]:
    (root / "hook-2.yaml").unlink()
    return ["hook-2.yaml"]


def add(root: Path) -> list[str]:
    return hook(root, "team/c.yaml", "team-c") + hook(root, "hook-9.yaml", "hook-9")


def rename(root: Path) -> list[str]:
    os.replace(root / "hook-1.yaml", root / "zz.yaml")
    return ["hook-1.yaml", "zz.yaml"]


def duplicate(root: Path) -> list[str]:
    return hook(root, "team/b.yaml", "hook-0")


def unknown_event_type(root: Path) -> list[str]:
    return hook(root, "hook-4.yaml", "hook-4", "package.status.lost")


def broken(root: Path) -> list[str]:
    write(root, "hook-5.yaml", "apiVersion: webhooks/v1\nkind: [Webhook\n")
    return ["hook-5.yaml"]


def other_file(root: Path) -> list[str]:
    (root / "README.md").write_text("still not a webhook\n", encoding="utf-8")
    return ["README.md"]


@pytest.mark.parametrize(
    "change", [edit, delete, add, rename, duplicate, unknown_event_type, broken, other_file]
)
def test_one_change_reloads_like_a_fresh_load(tree: Path, change: Change) -> None:
    """Editing, deleting, adding, renaming, breaking a file: the reload equals a fresh load."""
    reload_three_ways(tree, change)


def test_a_duplicate_name_resolved_again_reloads_like_a_fresh_load(tree: Path) -> None:
    """Removing the second use of a name clears the duplicate-name error, as a fresh load would."""
    loader = TreeLoader(tree)
    loader.load()
    assert [d.rule for d in loader.load(duplicate(tree)).diagnostics] == ["duplicate-name"]
    os.replace(tree / "hook-0.yaml", tree / "zz.yaml")  # the first use moves behind the second
    result = loader.load(["hook-0.yaml", "zz.yaml"])
    assert_same(result, load_tree(tree))
    assert [(d.rule, Path(d.file).name) for d in result.diagnostics] == [("duplicate-name", "zz.yaml")]
    assert_same(loader.load(hook(tree, "team/b.yaml", "team-b")), load_tree(tree))


def test_names_used_twice_in_one_file_reload_like_a_fresh_load(tree: Path) -> None:
    """A file using a name twice, and another file's name, can be added, edited and removed like any other."""
    loader = TreeLoader(tree)
    loader.load()
    twice = "\n---\n".join(WEBHOOK.format(name=n, event="package.created") for n in ("z", "z", "hook-1"))
    for text in (twice, twice.replace("hook-1", "z"), None, twice):
        if text is None:
            (tree / "hook-0.yaml").unlink()
        else:
            write(tree, "hook-0.yaml", text)
        assert_same(loader.load(["hook-0.yaml"]), load_tree(tree))
    os.replace(tree / "hook-1.yaml", tree / "a.yaml")  # the other use of hook-1 moves ahead of hook-0.yaml
    assert_same(loader.load(["hook-1.yaml", "a.yaml"]), load_tree(tree))


def test_the_revision_hashes_relative_paths_however_files_are_shown(tree: Path) -> None:
    """A tree built from files shown under other paths has the revision of its relative paths."""
    loaded = TreeLoader(tree)
    result = loaded.load()
    files = [(Path(f.path).relative_to(tree).as_posix(), f) for f in result.files]
    renamed = [(relative, LoadedFile(replace(f, path=f"{relative}.shown"), (), ())) for relative, f in files]
    expected = build_revision((relative, f.digest) for relative, f in files)
    assert build_tree_result("x", renamed).revision == expected == result.revision


def test_an_event_types_file_judges_the_unchanged_files_again(tree: Path) -> None:
    """Adding then removing an EventTypes file silences then restores warnings of untouched files."""
    loader = TreeLoader(tree)
    loader.load()
    assert [d.rule for d in loader.load(unknown_event_type(tree)).diagnostics] == ["unknown-event-type"]
    write(tree, "types.yaml", EVENT_TYPES)
    assert_same(loader.load(["types.yaml"]), load_tree(tree))
    assert load_tree(tree).diagnostics == ()
    (tree / "types.yaml").unlink()
    result = loader.load(["types.yaml"])
    assert_same(result, load_tree(tree))
    assert [d.rule for d in result.diagnostics] == ["unknown-event-type"]


def test_told_paths_only_the_others_are_not_looked_at(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the changed paths, the loader neither walks the tree nor checks files it was not told about."""
    loader = TreeLoader(tree)
    loader.load()
    walked: list[str] = []
    real = loader_module._discover

    def discover(*a: Any) -> Any:
        walked.append(a[0])
        return real(*a)

    monkeypatch.setattr(loader_module, "_discover", discover)
    checked: list[str] = []
    real_reuse = loader_module._reuse

    def reuse(path: str, *a: Any) -> Any:
        checked.append(path)
        return real_reuse(path, *a)

    monkeypatch.setattr(loader_module, "_reuse", reuse)
    result = loader.load(edit(tree))
    assert walked == [] and [Path(p).name for p in checked] == ["hook-3.yaml"]
    assert_same(result, load_tree(tree))


def test_a_new_directory_falls_back_to_a_full_scan(tree: Path) -> None:
    """A changed path in a directory the last scan did not walk makes the loader scan everything."""
    loader = TreeLoader(tree)
    loader.load()
    hook(tree, "new/deeper/x.yaml", "x")
    assert_same(loader.load(["new/deeper/x.yaml"]), load_tree(tree))


def test_a_tree_with_a_symlink_is_always_scanned(tree: Path) -> None:
    """A symlinked file may change through a path no event names: such a tree is scanned every time."""
    (tree / "..data").mkdir()  # where a ConfigMap keeps the files its visible links point to
    target = tree / "..data" / "linked.yaml"
    target.write_text(WEBHOOK.format(name="linked", event="package.created"), encoding="utf-8")
    (tree / "linked.yaml").symlink_to(target)
    loader = TreeLoader(tree)
    loader.load()
    target.write_text(WEBHOOK.format(name="linked-2", event="package.created"), encoding="utf-8")
    result = loader.load([])  # the watcher saw nothing under the tree
    assert_same(result, load_tree(tree))
    assert "linked-2" in {h.name for h in result.webhooks}


def test_a_path_turned_into_a_symlink_falls_back_to_a_full_scan(tree: Path) -> None:
    """A changed path that is now a symlink is not loaded on its own: the whole tree is scanned."""
    loader = TreeLoader(tree)
    loader.load()
    (tree / "hook-2.yaml").unlink()
    (tree / "hook-2.yaml").symlink_to(tree / "hook-1.yaml")
    assert_same(loader.load(["hook-2.yaml"]), load_tree(tree))
