"""pld.evals: accuracy of bundles on labelled splits, printing a table then one JSON line.

``evaluate`` (``pld eval``) scores a bundle or a baseline (zero-shot, few-shot) with bootstrap
intervals; ``build_report`` and ``write_report`` (``pld report``) compare the bundle with its
baselines in one self-contained HTML page and its JSON; ``audit`` (``pld bundle audit``) measures
each rule's effect by leaving it out; ``calibrate_bundle`` (``pld bundle calibrate``) decides
calibration for a prompt and a student on dev data and writes it into the bundle. Knows the
runtime, nothing of the distiller or the benchmarks. Importing this package loads its modules
and does no other work.
"""

from .ablation import AuditResult, Effect, audit, format_audit, rule_groups, with_rule_effects
from .baseline import Baseline, baseline_prompt, draw_examples, parse_baseline
from .calibrate import calibrate_bundle
from .evaluate import EvalResult, evaluate, evaluate_with_predictions, format_report
from .report import build_report, format_summary, json_path_for, write_report
from .report_html import render_html
from .report_types import ReportResult

__all__ = [
    "AuditResult",
    "Baseline",
    "Effect",
    "EvalResult",
    "ReportResult",
    "audit",
    "baseline_prompt",
    "build_report",
    "calibrate_bundle",
    "draw_examples",
    "evaluate",
    "evaluate_with_predictions",
    "format_audit",
    "format_report",
    "format_summary",
    "json_path_for",
    "parse_baseline",
    "render_html",
    "rule_groups",
    "with_rule_effects",
    "write_report",
]
