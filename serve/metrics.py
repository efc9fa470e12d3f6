"""The server's Prometheus metrics, in a registry of their own (never the global one).

Knows metric names, labels and buckets; the app, the worker and the registry of bundles record
into it. Every series that counts requests names the bundle version that answered. Serving a
device directory, it also exports the sync agent's state (``D/sync.json``, read at each scrape)
so that an operator's Prometheus sees, per device, what runs, how fresh it is and why an update
was refused (``deploy/prometheus-rules.yml`` aggregates them).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pld.fleet import read_sync_state

__all__ = ["BATCH_BUCKETS", "MS_BUCKETS", "ServeMetrics", "SyncCollector"]

# Seconds, resolving 1 ms to 500 ms (what one request on a CPU takes), then coarser for overload.
MS_BUCKETS = (
    0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServeMetrics:
    """Every series `pld serve` exports on /metrics."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "pld_serve_requests",
            "Classify requests by task, answering bundle version and outcome.",
            ["task", "version", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "pld_serve_request_seconds",
            "Classify request latency, body read to response, by task and bundle version.",
            ["task", "version"],
            buckets=MS_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "pld_serve_queue_wait_seconds",
            "Time from admission to the first input of a request reaching the engine.",
            ["task"],
            buckets=MS_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "pld_serve_batch_size",
            "Inputs decoded together in one engine call.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.inputs = Counter(
            "pld_serve_inputs", "Inputs classified.", ["task", "version"], registry=r
        )
        self.input_tokens = Counter(
            "pld_serve_input_tokens",
            "Tokens decoded for inputs (after the cached prefix).",
            ["task", "version"],
            registry=r,
        )
        self.swaps = Counter(
            "pld_serve_swaps",
            "Bundle activations by outcome: ok (swapped in), failed (refused, old one serves).",
            ["task", "outcome"],
            registry=r,
        )
        self.queue_inputs = Gauge(
            "pld_serve_queue_inputs", "Inputs admitted and not yet answered.", registry=r
        )
        self.ready = Gauge("pld_serve_ready", "1 once every bundle is primed.", registry=r)
        self.bundle_info = Gauge(
            "pld_serve_bundle_info",
            "The active bundle of each task (value 1).",
            ["task", "name", "version", "sha256"],
            registry=r,
        )

    def watch_sync(self, device_dir: str | Path) -> None:
        """Export the sync agent's state of ``device_dir`` (read at each scrape)."""
        self.registry.register(SyncCollector(Path(device_dir)))

    def set_active(
        self, task: str, old: tuple[str, str, str] | None, new: tuple[str, str, str] | None
    ) -> None:
        """Point ``pld_serve_bundle_info`` at a task's new (name, version, sha256)."""
        if old is not None:
            try:
                self.bundle_info.remove(task, *old)
            except KeyError:
                pass
        if new is not None:
            self.bundle_info.labels(task, *new).set(1)

    def render(self) -> bytes:
        """The Prometheus text format of every series."""
        return generate_latest(self.registry)


class SyncCollector(Collector):
    """The sync agent's ``D/sync.json`` as gauges; nothing while there is none."""

    def __init__(self, device_dir: Path) -> None:
        self.device_dir = device_dir

    def describe(self) -> list[Metric]:
        return []  # read at each scrape: the series exist only once the agent has run

    def collect(self) -> Iterator[Metric]:
        st = read_sync_state(self.device_dir)
        if st is None:
            return

        def gauge(name: str, doc: str, value: float | None) -> Iterator[Metric]:
            if value is not None:
                yield GaugeMetricFamily(name, doc, value=value)

        yield from gauge(
            "pld_sync_last_check_timestamp_seconds", "When the sync agent last tried to pull.",
            st.last_check,
        )  # fmt: skip
        yield from gauge(
            "pld_sync_last_success_timestamp_seconds", "When a pull last succeeded.",
            st.last_success,
        )  # fmt: skip
        yield from gauge(
            "pld_sync_last_change_timestamp_seconds", "When a pull last activated a bundle.",
            st.last_change,
        )  # fmt: skip
        yield from gauge(
            "pld_sync_next_attempt_timestamp_seconds", "When the sync agent pulls next.",
            st.next_attempt,
        )  # fmt: skip
        yield from gauge(
            "pld_sync_interval_seconds", "The sync agent's interval (--every).", st.every_s
        )
        yield from gauge(
            "pld_sync_consecutive_failures", "Failed pulls in a row (0: the last one succeeded).",
            st.consecutive_failures,
        )  # fmt: skip
        if st.index_version is not None:
            index = GaugeMetricFamily(
                "pld_sync_index_version",
                "The version of the channel index the device last accepted.",
                labels=["channel"],
            )
            index.add_metric([st.channel], st.index_version)
            yield index
        result = GaugeMetricFamily(
            "pld_sync_last_result_info",
            "1 for how the last check ended: pulled (the index was read and checked), unchanged "
            "(the store answered 304: nothing downloaded) or failed.",
            labels=["result"],
        )
        if st.last_result is not None:
            result.add_metric([st.last_result], 1)
        yield result
        error = GaugeMetricFamily(
            "pld_sync_last_error_info",
            "1 while the last pull failed, labelled with why (signature, expired, rejected, "
            "store, deadline, model_mismatch, locked, ...).",
            labels=["reason"],
        )
        if st.last_error is not None:
            error.add_metric([st.last_error.reason], 1)
        yield error
        deferred = GaugeMetricFamily(
            "pld_sync_rollout_deferred_info",
            "1 for each task whose newest bundle is in a staged rollout that excludes this device.",
            labels=["task", "version"],
        )
        for task, version in sorted(st.deferred.items()):
            deferred.add_metric([task, version], 1)
        yield deferred
