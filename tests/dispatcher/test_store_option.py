"""``--store URL`` and ``DISPATCH_STORE`` on the command line: which store a command opens, and errors that
never show a password."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from dispatcher.store.base import NewEvent
from dispatcher.store.sqlite import SQLiteStore
from tests.e2e.harness import dispatch_command, run_cli


def test_deliveries_list_reads_the_sqlite_file_named_by_store(tmp_path: Path) -> None:
    """``--store sqlite:////PATH`` opens that file instead of the one under --state."""
    path = tmp_path / "elsewhere.db"
    with SQLiteStore(path) as store:
        store.enqueue([NewEvent(f"{7:032x}", "package.created", b"{}", ("erp",))], 1000.0)
    done = run_cli("deliveries", "list", "--store", f"sqlite:///{path}", "--format", "json")
    assert done.returncode == 0, done.stderr
    assert [row["webhook"] for row in json.loads(done.stdout)] == ["erp"]


def test_dispatch_store_from_the_environment_is_used(tmp_path: Path) -> None:
    """Without --store, DISPATCH_STORE names the store."""
    path = tmp_path / "from-env.db"
    with SQLiteStore(path) as store:
        store.enqueue([NewEvent(f"{8:032x}", "package.created", b"{}", ("wms",))], 1000.0)
    done = subprocess.run(
        [*dispatch_command(), "deliveries", "list", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "DISPATCH_STORE": f"sqlite:///{path}"},
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert [row["webhook"] for row in json.loads(done.stdout)] == ["wms"]


def test_an_unknown_store_url_is_refused_without_its_password(tmp_path: Path) -> None:
    """``dispatch run --store redis://u:pw@h`` is a usage error naming the URL with the password hidden."""
    (tmp_path / "webhooks.d").mkdir()
    done = run_cli(
        "run", "--config", str(tmp_path / "webhooks.d"), "--stdin", "--store", "redis://u:s3cret@h/0"
    )
    assert done.returncode == 2
    assert "s3cret" not in done.stderr and "redis://u:***@h/0" in done.stderr
