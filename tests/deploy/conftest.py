from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.harness import Receiver, start_receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = start_receiver()
    yield rec
    rec.close()
