"""pld.bench: speed benchmarks over the runtime and the server, printing a table then one JSON line.

``run_latency`` (``pld bench latency``) times the runtime's modes; ``run_compare`` (``pld bench
compare``) runs pld side by side with ``create_chat_completion`` and llama.cpp's server;
``run_scaling`` (``pld bench scaling``) draws latency against prompt length, input length and
batch size; ``load_serve`` is the server's load test (``python -m pld.bench.load_serve``) and
``micro/`` holds the pytest-benchmark suites. ``default_bundle`` and ``default_inputs`` are what
every benchmark runs on. Accuracy lives in ``pld.evals``. Importing this package does no work.
"""

from .compare import run_compare
from .compare_summary import format_compare
from .inputs import default_bundle, default_inputs
from .latency import format_latency, run_latency
from .scaling import ScalingConfig, format_scaling, run_scaling

__all__ = [
    "ScalingConfig",
    "default_bundle",
    "default_inputs",
    "format_compare",
    "format_latency",
    "format_scaling",
    "run_compare",
    "run_latency",
    "run_scaling",
]
