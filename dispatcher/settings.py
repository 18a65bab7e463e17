"""The delivery engine's settings, shared by its parts (intake, scheduler, workers)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineSettings:
    """Sizes and intervals of the delivery engine (``dispatch run --workers/--per-endpoint`` set two)."""

    workers: int = 512  # attempts in flight at most; threads start as they are needed
    per_endpoint: int = 8
    lease_seconds: float = 120.0  # longer than the 60 s timeout ceiling plus queueing
    max_queued: int = 20_000  # leases held in memory at most (bounds memory and lease age)
    per_endpoint_queued: int = 2_000  # beyond this an endpoint's new leases go back to the store
    failing_endpoint_queued: int = 100  # the same for an endpoint whose last attempt failed (one slot)
    reclaim_interval_seconds: float = 15.0
    lease_batch: int = 500
