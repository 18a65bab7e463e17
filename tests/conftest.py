"""What every test may use: ``wait_until``, the one way a test waits for something to happen."""

from __future__ import annotations

from collections.abc import Callable

from tests.loopback import poll_until
from tests.pg import pg_cluster, pg_url

__all__ = ["pg_cluster", "pg_url", "wait_until"]  # pg_*: fixtures (a throwaway PostgreSQL per session)


def wait_until(predicate: Callable[[], object], timeout: float = 15.0, interval: float = 0.05) -> None:
    """Poll ``predicate`` until it returns something true; AssertionError once ``timeout`` seconds pass first.

    Also the way to check that something did NOT happen: wait for the event that proves the other outcome
    (the attempt recorded, the next line acknowledged), then assert; never sleep and assert.
    """
    if not poll_until(predicate, timeout, interval):
        raise AssertionError(f"condition not met within {timeout:g}s: {_name(predicate)}")


def _name(predicate: Callable[[], object]) -> str:
    return getattr(predicate, "__qualname__", None) or repr(predicate)
