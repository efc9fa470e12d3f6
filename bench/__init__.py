"""pld.bench: latency and accuracy benchmarks over the runtime, printing a table then one JSON line."""

__all__: list[str] = []
