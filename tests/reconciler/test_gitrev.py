"""Trees to compare against: a directory, or DIR as of a git revision of a temporary repository."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from reconciler.errors import RevisionError
from reconciler.gitrev import git_commit, load_baseline, materialise
from reconciler.loader import load_tree
from reconciler.plan import Action, build_plan

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **GIT_ENV},
    )
    return done.stdout.strip()


def webhook_yaml(name: str, url: str = "https://erp.example.com/hook") -> str:
    return (
        "apiVersion: webhooks/v1\nkind: Webhook\n"
        f"metadata:\n  name: {name}\n"
        f"spec:\n  target_url: {url}\n  event_type: package.created\n  secret_key: {{env: SECRET}}\n"
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository whose config lives in deploy/webhooks.d, with two commits."""
    root = tmp_path / "repo"
    config = root / "deploy" / "webhooks.d"
    config.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    (root / "README").write_text("not a webhook\n")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "before webhooks")
    (config / "a.yaml").write_text(webhook_yaml("a"))
    (config / "b.yaml").write_text(webhook_yaml("b"))
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "two webhooks")
    return root


def test_materialise_writes_only_the_directory_as_of_the_revision(repo: Path, tmp_path: Path) -> None:
    """The files of DIR at REF land at the top of the target directory, nothing else of the repository."""
    (repo / "deploy" / "webhooks.d" / "a.yaml").write_text(webhook_yaml("a", "https://changed.example/"))
    out = tmp_path / "out"
    out.mkdir()
    commit = materialise("HEAD", repo / "deploy" / "webhooks.d", out)
    assert commit == git(repo, "rev-parse", "HEAD")
    assert sorted(p.name for p in out.iterdir()) == ["a.yaml", "b.yaml"]
    assert "erp.example.com" in (out / "a.yaml").read_text()


def test_baseline_at_head_plans_the_uncommitted_changes(repo: Path) -> None:
    """Comparing the working tree against HEAD shows what was changed, added and deleted since the commit."""
    config = repo / "deploy" / "webhooks.d"
    (config / "a.yaml").write_text(webhook_yaml("a", "https://changed.example/"))
    (config / "b.yaml").unlink()
    (config / "c.yaml").write_text(webhook_yaml("c"))
    baseline = load_baseline("HEAD", config)
    assert (baseline.kind, baseline.commit) == ("git", git(repo, "rev-parse", "HEAD"))
    current = load_tree(config)
    plan = build_plan(
        {h.name: h for h in baseline.tree.webhooks},
        {h.name: h for h in current.webhooks},
    )
    assert [(c.action, c.name) for c in plan.changes] == [
        (Action.CHANGE, "a"),
        (Action.REMOVE, "b"),
        (Action.ADD, "c"),
    ]
    removed = plan.changes[1]
    assert removed.file == os.path.normpath(config / "b.yaml")  # shown under DIR, not the temporary copy


def test_relative_revisions_and_shas_resolve(repo: Path) -> None:
    """HEAD~1, a branch name and a full sha are all accepted; before DIR existed the tree is empty."""
    config = repo / "deploy" / "webhooks.d"
    first = git(repo, "rev-parse", "HEAD~1")
    assert load_baseline("HEAD~1", config).tree.webhooks == ()
    assert load_baseline(first, config).commit == first
    assert len(load_baseline("main", config).tree.webhooks) == 2


def test_a_directory_ref_is_loaded_as_is(repo: Path, tmp_path: Path) -> None:
    """When REF is an existing directory it is loaded directly, without git."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "z.yaml").write_text(webhook_yaml("z"))
    baseline = load_baseline(str(other), repo / "deploy" / "webhooks.d")
    assert (baseline.kind, baseline.commit) == ("directory", None)
    assert [h.name for h in baseline.tree.webhooks] == ["z"]


def test_unknown_revision_raises_a_clear_error(repo: Path) -> None:
    """A REF that is neither a directory nor a revision raises RevisionError naming it."""
    with pytest.raises(RevisionError, match="'no-such-ref': no such directory, and not a git revision"):
        load_baseline("no-such-ref", repo / "deploy" / "webhooks.d")


def test_option_like_revision_is_not_passed_to_git_as_an_option(repo: Path) -> None:
    """A REF starting with '-' is treated as a revision name, never as a git option."""
    with pytest.raises(RevisionError, match="not a git revision"):
        load_baseline("--output=/tmp/x", repo / "deploy" / "webhooks.d")


def test_revision_outside_a_checkout_raises(tmp_path: Path) -> None:
    """A revision cannot be read for a directory that is not inside a git checkout."""
    config = tmp_path / "plain" / "webhooks.d"
    config.mkdir(parents=True)
    with pytest.raises(RevisionError, match="not inside a git checkout"):
        load_baseline("HEAD", config)


def test_git_commit_of_a_checkout_and_of_a_plain_directory(repo: Path, tmp_path: Path) -> None:
    """git_commit gives HEAD's sha inside a checkout and None elsewhere."""
    assert git_commit(repo / "deploy" / "webhooks.d") == git(repo, "rev-parse", "HEAD")
    plain = tmp_path / "plain"
    plain.mkdir()
    assert git_commit(plain) is None
    assert git_commit(tmp_path / "missing") is None


def test_without_git_installed(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without git on PATH, git_commit is None and a revision REF raises RevisionError."""
    monkeypatch.setenv("PATH", "")
    assert git_commit(repo) is None
    with pytest.raises(RevisionError, match="git is not installed"):
        load_baseline("HEAD", repo / "deploy" / "webhooks.d")
