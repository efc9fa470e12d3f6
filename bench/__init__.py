"""pld.bench: latency and accuracy benchmarks over the runtime, printing a table then one JSON line.

``evaluate`` (``pld eval``) scores a bundle or a baseline on a labelled split; ``audit`` (``pld
bundle audit``) measures each rule's effect by leaving it out; ``run_latency`` (``pld bench
latency``) times the runtime's modes; ``run_scaling`` (``pld bench scaling``) draws its scaling
curves. Importing this package does no work.
"""

from .ablation import AuditResult, Effect, audit, format_audit, rule_groups, with_rule_effects
from .baseline import Baseline, baseline_prompt, draw_examples, parse_baseline
from .evaluate import EvalResult, evaluate, format_report
from .latency import default_bundle, default_inputs, format_latency, run_latency
from .scaling import ScalingConfig, format_scaling, run_scaling

__all__ = [
    "AuditResult",
    "Baseline",
    "Effect",
    "EvalResult",
    "ScalingConfig",
    "audit",
    "baseline_prompt",
    "default_bundle",
    "default_inputs",
    "draw_examples",
    "evaluate",
    "format_audit",
    "format_latency",
    "format_report",
    "format_scaling",
    "parse_baseline",
    "rule_groups",
    "run_latency",
    "run_scaling",
    "with_rule_effects",
]
