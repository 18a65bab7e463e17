from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import DispatchProcess, Receiver, start_receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = start_receiver()
    yield rec
    rec.close()


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    path = tmp_path / "webhooks.d"
    path.mkdir()
    return path


@pytest.fixture
def processes() -> Iterator[list[DispatchProcess]]:
    """Dispatchers started by a test; every one is stopped (or killed) at the end."""
    started: list[DispatchProcess] = []
    yield started
    for p in started:
        p.stop()
