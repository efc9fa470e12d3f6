"""The server's Prometheus metrics, in a registry of their own (never the global one).

Knows metric names, labels and buckets; the app, the worker and the registry of bundles record
into it. Every series that counts requests names the bundle version that answered.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["BATCH_BUCKETS", "MS_BUCKETS", "ServeMetrics"]

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
