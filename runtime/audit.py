"""The audit view of a bundle: its task, labels, numbered rules (with each rule's measured effect
when the bundle carries one), metrics and provenance as plain text for a human reviewer (``pld
bundle show``). Knows the bundle format only.
"""

from __future__ import annotations

from .bundle import Bundle

__all__ = ["render_audit"]


def render_audit(b: Bundle) -> str:
    """A plain-text audit view of a bundle: what an auditor reads before approving it."""
    lines = [
        f"{b.name} {b.version}  (schema {b.schema_version}, created {b.created_at})",
        f"digest   {b.digest}",
        f"student  {b.student.model}  sha256 {b.student.sha256 or '-'}  on mismatch: {b.student.on_mismatch}",
        f"scoring  calibration: {b.runtime.calibration}",
        "",
        f"Task: {b.task.name}",
        f"  {b.task.description}",
        f"  Input format: {b.task.input_format}",
        "",
        "Labels:",
    ]
    lines += [f"  - {lab.name}: {lab.definition}" for lab in b.task.labels]
    lines += ["", f"Rules ({len(b.instructions)}):"]
    if not b.instructions:
        lines.append("  (none: zero-shot, the student sees only the task and the labels)")
    effects = {e.id: e for e in (b.metrics.rule_effects or [])} if b.metrics else {}
    for i, ins in enumerate(b.instructions, 1):
        src = f"[{ins.id}; support {ins.support}; cluster {ins.cluster}; round {ins.round}]"
        lines.append(f"  {i}. {ins.text}  {src}")
        if (e := effects.get(ins.id)) is not None:
            lines.append(
                f"     effect: without it macro-F1 {e.delta_macro_f1:+.3f} "
                f"[{e.ci_low:+.3f}, {e.ci_high:+.3f}], accuracy {e.delta_accuracy:+.3f} (n={e.n})"
            )
    if b.metrics:
        m = b.metrics
        lines += [
            "",
            f"Metrics ({m.split}, n={m.n}): Macro-F1 {m.macro_f1:.3f}, accuracy {m.accuracy:.3f}"
            + (
                f"; zero-shot Macro-F1 {m.zero_shot_macro_f1:.3f}"
                if m.zero_shot_macro_f1 is not None
                else ""
            ),
        ]
    if effects:
        lines.append(
            "Rule effects: each rule left out in turn (pld bundle audit), with a 95% paired "
            "bootstrap interval; negative means the rule helps"
        )
    if b.provenance:
        lines += ["", "Provenance:"] + [f"  {k}: {v}" for k, v in sorted(b.provenance.items())]
    return "\n".join(lines)
