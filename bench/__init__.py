"""pld.bench: speed benchmarks over the runtime and the server; each prints a table, then one
JSON line.

- ``latency`` (``pld bench latency``): the runtime's modes in one process (``LatencyResult``).
- ``compare`` (``pld bench compare``): pld against ``create_chat_completion`` and llama.cpp's
  server. The contenders are ``contenders`` (worker processes), ``workers`` (their driver),
  ``llama_server``, ``worker_protocol`` (the messages) and ``chat`` with ``templates/`` (chat
  templates, label grammar); the numbers are ``compare_summary`` and ``compare_types``.
- ``scaling`` (``pld bench scaling``, ``scaling_cli``): latency against prompt length, input
  length and batch size, cold start against prompt length; ``scaling_config`` (the grid),
  ``sweeps`` (the measuring), ``lengths`` (texts of chosen lengths), ``scaling_types`` (rows)
  and ``plots`` (figures).
- ``load_serve`` (``python -m pld.bench.load_serve``): the server's load test, with
  ``serve_harness`` (servers and clients), ``serve_costs`` (batching, memory, readiness) and
  ``serve_types`` (their results).
- ``inputs`` and ``data/``: the bundle and records every benchmark runs on by default;
  ``micro/``: the pytest-benchmark suites.

Accuracy lives in ``pld.evals``. Importing this package does no work.
"""

from .compare import run_compare
from .compare_summary import format_compare
from .inputs import default_bundle, default_inputs
from .latency import LatencyResult, format_latency, run_latency
from .scaling import format_scaling, run_scaling
from .scaling_config import ScalingConfig

__all__ = [
    "ScalingConfig",
    "default_bundle",
    "default_inputs",
    "format_compare",
    "LatencyResult",
    "format_latency",
    "format_scaling",
    "run_compare",
    "run_latency",
    "run_scaling",
]
