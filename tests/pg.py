"""A throwaway PostgreSQL cluster for the tests: one per session, in a temporary directory of its own,
listening only on a Unix socket there (``listen_addresses=''``: no TCP at all), each test its own database.
PostgreSQL refuses to run as root: as root the cluster runs as the ``postgres`` user.

Skipped on a developer's machine without PostgreSQL, a failure in CI (``.ci/run`` installs it).
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.requires import require


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


BIN_DIR = _bin_dir()
AVAILABLE = BIN_DIR is not None and (os.geteuid() != 0 or shutil.which("runuser") is not None)


class Cluster:
    """A running cluster; ``database()`` creates a fresh database and returns its URL."""

    def __init__(self, root: Path) -> None:
        assert BIN_DIR is not None
        self.root = root
        self.data = root / "data"
        self.socket_dir = root / "sock"
        self._as_postgres = os.geteuid() == 0
        self._names = itertools.count(1)
        root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir()
        if self._as_postgres:
            self._open_parents()
            shutil.chown(root, "postgres")
            shutil.chown(self.socket_dir, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        options = f"-k {self.socket_dir} -c listen_addresses='' -c fsync=on -c max_connections=200"
        self._run(
            "pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-l", str(root / "log"), "-o", options, "start"
        )

    def _open_parents(self) -> None:
        """The cluster's user must reach its directory: open the parents for traversal only. Again before
        each tool: a pytest session starting meanwhile closes ``/tmp/pytest-of-<user>`` back to 0700."""
        for parent in [self.root, *self.root.parents]:
            if parent == Path("/"):
                break
            parent.chmod(parent.stat().st_mode | 0o011)

    def _run(self, tool: str, *args: str) -> None:
        assert BIN_DIR is not None
        command = [str(BIN_DIR / tool), *args]
        if self._as_postgres:
            self._open_parents()
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(
                f"{tool} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}"
            )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}"

    def database(self) -> str:
        """A new, empty database; its URL."""
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except RuntimeError:
            if (self.data / "postmaster.pid").exists():  # still running: a real failure
                raise


@pytest.fixture(scope="session")
def pg_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The session's PostgreSQL cluster (skipped without PostgreSQL, except in CI)."""
    require(AVAILABLE, "PostgreSQL (initdb, pg_ctl)")
    # As root, not under /tmp/pytest-of-root: every pytest session starting on the machine closes that back
    # to 0700, which locks the postgres user out of a cluster it is running. A directory of the session's own.
    own = os.geteuid() == 0
    root = Path(tempfile.mkdtemp(prefix="webhooks-as-code-pg-")) if own else tmp_path_factory.mktemp("pg")
    cluster: Cluster | None = None
    try:
        cluster = Cluster(root / "cluster")
        yield cluster
    finally:
        if cluster is not None:
            cluster.stop()
        if own:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_cluster: Cluster) -> str:
    """The URL of a fresh database of its own for this test."""
    return pg_cluster.database()
