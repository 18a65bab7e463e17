"""Prometheus metrics of one dispatcher process (SPEC section 8).

Each ``Metrics`` owns its own registry, so tests and several dispatchers in one process never collide.
The two reload metrics keep the names Prometheus and Alertmanager made familiar, unprefixed, as the spec
writes them; everything else is prefixed ``dispatch_``. No label ever carries a secret or a URL.

With an ingest process (``dispatcher.ingest_process``) the ingest counters are counted there: the parent's
``render`` first brings its own up to the child's totals, so a scrape after an ack counts that ack.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from dispatcher.store.base import DeliveryStatus

#: Seconds; covers a fast loopback receiver up to the 60 s timeout ceiling.
_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _QueueCollector(Collector):
    """Reads queue depth from the store at scrape time, so the gauge is never stale."""

    def __init__(
        self,
        counts: Callable[[], dict[DeliveryStatus, int]],
        oldest_age: Callable[[], float | None],
    ) -> None:
        self._counts = counts
        self._oldest_age = oldest_age

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "dispatch_queue_depth", "Deliveries in the store by status.", labels=["status"]
        )
        for status, n in sorted(self._counts().items(), key=lambda kv: kv[0].value):
            depth.add_metric([status.value], n)
        yield depth
        age = self._oldest_age()
        yield GaugeMetricFamily(
            "dispatch_oldest_open_delivery_age_seconds",
            "Age of the oldest pending or failed delivery (0 when none).",
            value=age or 0.0,
        )


class _StoreCollector(Collector):
    """Which store backend is in use, and on a shared store how many dispatchers hold leases (at scrape
    time). The URL is never a label: /status shows it, redacted."""

    def __init__(self, backend: str, holders: Callable[[], int | None]) -> None:
        self._backend = backend
        self._holders = holders

    def collect(self) -> Iterator[GaugeMetricFamily]:
        info = GaugeMetricFamily("dispatch_store_info", "The store backend in use.", labels=["backend"])
        info.add_metric([self._backend], 1)
        yield info
        n = self._holders()
        if n is not None:
            yield GaugeMetricFamily(
                "dispatch_store_lease_holders",
                "Dispatchers holding live delivery leases on the shared store.",
                value=n,
            )


@dataclass(frozen=True)
class IngestTotals:
    """The ingest counters, cumulative: what an ingest process reports to its parent."""

    accepted: float = 0.0
    duplicate: float = 0.0
    rejected: float = 0.0
    refused: float = 0.0  # event-socket connections refused


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.events_accepted = Counter(
            "dispatch_events_accepted", "Events durably stored and acknowledged.", registry=r
        )
        self.events_duplicate = Counter(
            "dispatch_events_duplicate", "Events acknowledged as duplicates of a stored uuid.", registry=r
        )
        self.events_rejected = Counter(
            "dispatch_events_rejected", "Input lines rejected (bad JSON, no event.type, ...).", registry=r
        )
        self.deliveries = Counter(
            "dispatch_deliveries",
            "Lease outcomes: attempts (delivered, retry, dead) and no-attempt ones (hold, release).",
            ["outcome"],
            registry=r,
        )
        self.attempt_duration = Histogram(
            "dispatch_attempt_duration_seconds",
            "Duration of HTTP delivery attempts.",
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.callbacks = Counter(
            "dispatch_callbacks", "Outcome callbacks POSTed, by result.", ["result"], registry=r
        )
        self.secret_errors = Counter(
            "dispatch_secret_errors",
            "Attempts failed because a secret reference was refused or could not be resolved.",
            registry=r,
        )
        self.connections_refused = Counter(
            "dispatch_connections_refused",
            "Connections refused because the listener (socket or status) had as many as it serves at once.",
            ["listener"],
            registry=r,
        )
        self.reloads = Counter(
            "dispatch_config_reloads", "Configuration reload attempts by result.", ["result"], registry=r
        )
        self.reload_successful = Gauge(
            "config_last_reload_successful", "Whether the last configuration reload succeeded.", registry=r
        )
        self.reload_success_time = Gauge(
            "config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration reload.",
            registry=r,
        )
        self.webhooks = Gauge(
            "dispatch_webhooks", "Webhooks in the active table by status.", ["status"], registry=r
        )
        self.reload_successful.set(1)
        self._ingest_totals: Callable[[], IngestTotals] | None = None
        self._ingest_seen = IngestTotals()
        self._ingest_lock = threading.Lock()

    def ingest_totals(self) -> IngestTotals:
        """This process's own ingest counters."""

        def value(name: str, labels: dict[str, str] | None = None) -> float:
            return self.registry.get_sample_value(f"dispatch_{name}_total", labels) or 0.0

        return IngestTotals(
            accepted=value("events_accepted"),
            duplicate=value("events_duplicate"),
            rejected=value("events_rejected"),
            refused=value("connections_refused", {"listener": "socket"}),
        )

    def forward_ingest(self, totals: Callable[[], IngestTotals]) -> None:
        """The ingest counters are another process's: ``totals()`` gives them at each render."""
        self._ingest_totals = totals

    def _catch_up(self, totals: IngestTotals) -> None:
        counters = {
            "accepted": self.events_accepted,
            "duplicate": self.events_duplicate,
            "rejected": self.events_rejected,
            "refused": self.connections_refused.labels(listener="socket"),
        }
        with self._ingest_lock:  # two scrapes at once: each count is added once (an older reading adds 0)
            seen = {}
            for f in fields(IngestTotals):
                now, before = getattr(totals, f.name), getattr(self._ingest_seen, f.name)
                if now > before:
                    counters[f.name].inc(now - before)
                seen[f.name] = max(now, before)
            self._ingest_seen = IngestTotals(**seen)

    def watch_queue(
        self,
        counts: Callable[[], dict[DeliveryStatus, int]],
        oldest_age: Callable[[], float | None],
    ) -> None:
        self.registry.register(_QueueCollector(counts, oldest_age))

    def watch_store(self, backend: str, holders: Callable[[], int | None]) -> None:
        self.registry.register(_StoreCollector(backend, holders))

    def render(self) -> bytes:
        if self._ingest_totals is not None:
            self._catch_up(self._ingest_totals())
        return generate_latest(self.registry)
