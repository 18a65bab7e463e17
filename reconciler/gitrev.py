"""Trees to compare against (``--against REF``) and the git commit of a checkout.

REF is a directory when one exists at that path; otherwise it is a git revision (``HEAD``, ``main``,
``HEAD~1``, a sha) of the checkout that contains DIR. For a revision, the files of DIR *as of that revision*
(same path relative to the repository root) are written to a temporary directory with ``git archive`` and
loaded like any other tree. git runs locally only: transports are disabled, so even a partial clone cannot
fetch over the network.
"""

from __future__ import annotations

import dataclasses
import io
import os
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from reconciler.errors import RevisionError
from reconciler.loader import TreeResult, load_tree
from reconciler.model import Webhook

_GIT_TIMEOUT_SECONDS = 60
# protocol.allow=never: no transport at all, so git can never reach the network (e.g. lazy fetches of a
# partial clone); GIT_TERMINAL_PROMPT=0: never wait for a password on a terminal.
_GIT_CONFIG = ("-c", "protocol.allow=never")
_GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0"}


@dataclass(frozen=True)
class Baseline:
    """The tree named by ``--against REF``."""

    ref: str
    kind: Literal["directory", "git"]
    commit: str | None  # the commit REF resolved to; None for a directory
    tree: TreeResult


def load_baseline(ref: str, directory: str | Path) -> Baseline:
    """Load the tree REF names: a directory, else DIR as of git revision REF. Raises RevisionError."""
    if Path(ref).is_dir():
        return Baseline(ref, "directory", None, load_tree(ref))
    with tempfile.TemporaryDirectory(prefix="reconcile-against-") as tmp:
        commit = materialise(ref, directory, Path(tmp))
        tree = load_tree(tmp)
        webhooks = tuple(_relocated(h, tmp, directory) for h in tree.webhooks)
        # Only the webhooks are remapped: they carry the file names the plan shows; the temporary paths in
        # the baseline's diagnostics are only ever counted.
        return Baseline(ref, "git", commit, dataclasses.replace(tree, webhooks=webhooks))


def materialise(ref: str, directory: str | Path, into: Path) -> str:
    """Write the files of ``directory`` as of git revision ``ref`` into ``into``; return the commit sha.

    A revision in which the directory does not exist yet yields an empty tree (every webhook is then "added").
    """
    top, prefix = _locate(ref, Path(directory))
    commit = _resolve(ref, top)
    treeish = f"{commit}:{prefix}" if prefix else f"{commit}^{{tree}}"
    kind = _git(["cat-file", "-t", treeish], top, check=False)
    if kind.returncode != 0:
        return commit  # DIR does not exist at that revision
    if kind.stdout.strip() != b"tree":
        raise RevisionError(f"--against {ref!r}: {prefix or '.'} is not a directory at that revision")
    archive = _git(["archive", "--format=tar", treeish], top).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter=_safe_member)
    return commit


def git_commit(directory: str | Path) -> str | None:
    """HEAD commit of the checkout containing ``directory``; None outside a checkout or without git."""
    try:
        done = _git(["rev-parse", "--verify", "--quiet", "HEAD"], Path(directory), check=False)
    except RevisionError:
        return None
    sha = done.stdout.decode().strip()
    return sha if done.returncode == 0 and sha else None


def _locate(ref: str, directory: Path) -> tuple[Path, str]:
    """The repository root containing ``directory`` and the directory's path inside it (``a/b`` or "")."""
    # DIR itself may be gone from the working tree (deleted, compared against HEAD): ask git from its
    # nearest existing ancestor and append the missing parts.
    existing, missing = directory.absolute(), list[str]()
    while not existing.is_dir():
        missing.insert(0, existing.name)
        existing = existing.parent
    done = _git(["rev-parse", "--show-toplevel", "--show-prefix"], existing, check=False)
    if done.returncode != 0:
        raise RevisionError(
            f"--against {ref!r}: no such directory, and {directory} is not inside a git checkout "
            f"({_stderr(done)})"
        )
    top, prefix = done.stdout.decode().split("\n")[:2]
    parts = [p for p in prefix.split("/") if p] + missing
    return Path(top), "/".join(parts)


def _resolve(ref: str, top: Path) -> str:
    args = ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"]
    done = _git(args, top, check=False)
    sha = done.stdout.decode().strip()
    if done.returncode != 0 or not sha:
        raise RevisionError(f"--against {ref!r}: no such directory, and not a git revision in {top}")
    return sha


def _safe_member(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    # The "data" filter refuses absolute paths and links leaving the directory; skip such a member instead
    # of failing the whole comparison (a symlink to a file elsewhere in the repo cannot be resolved anyway).
    try:
        return tarfile.data_filter(member, dest)
    except tarfile.FilterError:
        return None


def _git(args: Sequence[str], cwd: Path, *, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    try:
        done = subprocess.run(
            ["git", *_GIT_CONFIG, "-C", str(cwd), *args],
            capture_output=True,
            env={**os.environ, **_GIT_ENV},
            timeout=_GIT_TIMEOUT_SECONDS,
            check=False,
        )
    except FileNotFoundError as exc:
        raise RevisionError("git is not installed (needed to read a git revision)") from exc
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RevisionError(f"git {args[0]} failed: {exc}") from exc
    if check and done.returncode != 0:
        raise RevisionError(f"git {args[0]} failed: {_stderr(done)}")
    return done


def _stderr(done: subprocess.CompletedProcess[bytes]) -> str:
    return done.stderr.decode(errors="replace").strip() or f"exit status {done.returncode}"


def _relocated(hook: Webhook, tmp: str, directory: str | Path) -> Webhook:
    return dataclasses.replace(
        hook, source=dataclasses.replace(hook.source, file=_remap(hook.source.file, tmp, directory))
    )


def _remap(file: str, tmp: str, directory: str | Path) -> str:
    """A file path inside the temporary tree, shown as the same file under DIR."""
    try:
        relative = Path(file).resolve().relative_to(Path(tmp).resolve())
    except ValueError:
        return file
    return os.path.normpath(os.path.join(directory, relative))
