"""Test doubles for the committer's intake (``dispatcher.ingest.DeliveryIntake``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dispatcher.intake import UNLEASED, Admission
from dispatcher.store.base import Lease


class NoIntake:
    """No engine: every delivery is created unleased (for the scheduler); ``admit`` gets nothing."""

    def plan(self, webhooks: Sequence[str]) -> Admission:
        return UNLEASED

    def admit(self, leases: Sequence[Lease]) -> object:
        return None


class LeasingIntake:
    """Creates every delivery leased and passes the leases to ``on_admit``."""

    def __init__(self, on_admit: Callable[[Sequence[Lease]], object], lease_seconds: float = 60.0) -> None:
        self._on_admit = on_admit
        self._lease_seconds = lease_seconds

    def plan(self, webhooks: Sequence[str]) -> Admission:
        return Admission(self._lease_seconds)

    def admit(self, leases: Sequence[Lease]) -> object:
        return self._on_admit(leases)
