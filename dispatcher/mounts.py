"""Warn when ``--config`` looks like a Kubernetes ``subPath`` mount, which never sees ConfigMap updates.

A ConfigMap mounted as a directory is updated by the kubelet with an atomic swap of the ``..data`` symlink,
which the watcher follows. A ``subPath`` mount is a bind mount of one path taken when the container
started: it pins that inode, so the dispatcher would keep serving the old table forever. The heuristic,
over ``/proc/self/mountinfo`` (mount point and root fields):

1. A file directly in the directory is itself a mount point. Only ``subPath`` (or a hand-made bind mount
   of a single file, which goes stale the same way when the file is replaced) produces one.
2. The directory itself is a mount point whose root lies under the kubelet's ``volume-subpaths/``
   directory: the kubelet's own ``subPath`` bind mount of a directory.

A directory mount without ``..data`` is not reported: an ``emptyDir`` filled by git-sync or a host
directory is a sound layout. Pure functions over the mountinfo text; ``check_config_mount`` reads it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dispatcher.logs import fields, get_logger

log = get_logger("mounts")

MOUNTINFO = Path("/proc/self/mountinfo")
_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    """One line of mountinfo: the path inside its filesystem that is mounted (root) and where (point)."""

    root: str
    point: str


def _unescape(field: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> tuple[Mount, ...]:
    """The mounts of a ``/proc/<pid>/mountinfo`` text (fields 4 and 5, octal escapes undone)."""
    mounts = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5:
            mounts.append(Mount(_unescape(parts[3]), _unescape(parts[4])))
    return tuple(mounts)


def build_subpath_warnings(directory: str, entries: Iterable[str], mounts: Iterable[Mount]) -> list[str]:
    """Why ``directory`` (absolute, symlinks resolved) with these entry names looks like a subPath mount;
    empty when it does not."""
    by_point = {m.point: m for m in mounts}
    problems = []
    here = by_point.get(directory)
    if here is not None and "/volume-subpaths/" in here.root:
        problems.append(f"{directory} is a subPath mount (mount root {here.root})")
    for name in sorted(entries):
        if name.startswith("."):
            continue
        path = os.path.join(directory, name)
        if path in by_point:
            problems.append(f"{path} is a mount point of its own (a subPath file mount)")
    return problems


def check_config_mount(directory: Path, mountinfo: Path = MOUNTINFO) -> list[str]:
    """Log a warning for each reason ``directory`` looks like a subPath mount; returns the reasons."""
    try:
        text = mountinfo.read_text(errors="replace")
        resolved = os.path.realpath(directory)
        entries = os.listdir(resolved)
    except OSError:
        return []  # not Linux, or the directory is unreadable (the loader reports that)
    problems = build_subpath_warnings(resolved, entries, parse_mountinfo(text))
    for problem in problems:
        log.warning(
            "config.subpath_mount",
            extra=fields(
                problem=problem,
                advice="updates to a subPath mount never arrive: mount the ConfigMap as a directory",
            ),
        )
    return problems
