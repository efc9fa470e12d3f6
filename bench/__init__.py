"""pld.bench: latency and accuracy benchmarks over the runtime, printing a table then one JSON line.

``evaluate`` (``pld eval``) scores a bundle or a baseline on a labelled split; ``audit`` (``pld
bundle audit``) measures each rule's effect by leaving it out; ``run_latency`` (``pld bench
latency``) times the runtime's modes. Importing this package does no work.
"""

from .ablation import AuditResult, Effect, audit, format_audit, rule_groups, with_rule_effects
from .baseline import Baseline, baseline_prompt, draw_examples, parse_baseline
from .evaluate import EvalResult, evaluate, format_report
from .latency import default_bundle, default_inputs, format_latency, run_latency

__all__ = [
    "AuditResult",
    "Baseline",
    "Effect",
    "EvalResult",
    "audit",
    "baseline_prompt",
    "default_bundle",
    "default_inputs",
    "draw_examples",
    "evaluate",
    "format_audit",
    "format_latency",
    "format_report",
    "parse_baseline",
    "rule_groups",
    "run_latency",
    "with_rule_effects",
]
