"""Rule ablation (``pld bundle audit``): what each rule of a bundle does, measured by leaving it out.

For every rule (or group of rules) the bundle's prompt without it classifies the same labelled
records as the full prompt; the change in Macro-F1 and accuracy gets a paired bootstrap interval.
Removing rule i renumbers the rules after it ("1. ...", "2. ..."), so a variant shares its tokens
with the full prompt only up to rule i: one classifier switches between the variants with
``Classifier.reprime`` and decodes only the rest. Knows the runtime, not the distiller.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import msgspec

from pld.errors import ConfigError, DataError
from pld.metrics import paired_bootstrap_delta, score
from pld.progress import progress as progress_bar
from pld.runtime import (
    Bundle,
    Classifier,
    ClassifierOptions,
    Instruction,
    Metrics,
    load_bundle,
    read_records,
    render_system_prompt,
    resolve_bundle_path,
)
from pld.runtime.bundle import RuleEffect

__all__ = ["AuditResult", "Effect", "audit", "format_audit", "rule_groups", "with_rule_effects"]

By = Literal["rule", "group"]


class Effect(msgspec.Struct, frozen=True, kw_only=True):
    """What leaving out rules ``indices`` (1-based) did; deltas are variant minus baseline."""

    index: int  # the first rule removed
    indices: list[int]
    ids: list[str]
    text: str  # the first removed rule's text
    delta_macro_f1: float
    ci_low: float  # paired percentile bootstrap interval of delta_macro_f1
    ci_high: float
    delta_accuracy: float
    accuracy_ci: tuple[float, float]
    changed: int  # records whose predicted label changed
    prompt_tokens: int  # the variant's prefix: what priming it from scratch decodes
    tokens_decoded: int  # what switching to it from the previous variant decoded
    predictions: list[str]  # one label per record, in the data's order


class AuditResult(msgspec.Struct, frozen=True, kw_only=True):
    """A leave-one-out audit: the baseline, one ``Effect`` per rule or group (in rule order),
    and the prompt tokens decoded with reuse against priming every variant from scratch."""

    bundle: str
    model: str
    data: str
    by: str
    n: int
    calibrated: bool
    baseline_macro_f1: float
    baseline_accuracy: float
    rules: list[Effect]
    baseline_predictions: list[str]
    prompt_tokens: int
    tokens_decoded: int
    tokens_from_scratch: int
    token_ratio: float  # tokens_from_scratch / tokens_decoded
    wall_s: float
    prompt_s: float  # of wall_s: priming and repriming
    n_boot: int
    seed: int


def rule_groups(
    instructions: Sequence[Instruction], by: By, group_size: int = 8
) -> list[list[int]]:
    """The 0-based rule indices removed together, one list per variant, in rule order.

    ``rule``: each rule alone. ``group``: rules sharing a ``cluster`` (the distiller's cluster
    id) go together and a rule without one stays alone; when no rule has a cluster (a bundle
    written by hand), consecutive blocks of ``group_size`` rules.
    """
    n = len(instructions)
    if by == "rule":
        return [[i] for i in range(n)]
    if by != "group":
        raise ConfigError(f"by is {by!r}; use 'rule' or 'group'")
    if group_size < 1:
        raise ConfigError(f"group_size is {group_size}; use at least 1")
    if all(ins.cluster is None for ins in instructions):
        return [list(range(i, min(i + group_size, n))) for i in range(0, n, group_size)]
    groups: dict[object, list[int]] = {}
    for i, ins in enumerate(instructions):
        groups.setdefault(("c", ins.cluster) if ins.cluster is not None else ("r", i), []).append(i)
    return sorted(groups.values())


def audit(
    bundle: str | Path | Bundle,
    data: str | Path,
    *,
    limit: int | None = None,
    by: By = "rule",
    group_size: int = 8,
    options: ClassifierOptions | None = None,
    model: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = True,
) -> AuditResult:
    """Leave each rule (``by="rule"``) or group (``"group"``, see ``rule_groups``) out, classify
    the first ``limit`` records of ``data`` again, and measure the change against all rules.

    The classifier runs on the full-size sliding-window cache (at least 2 requests per batch),
    where cutting the cache back is exact: every variant gives the same predictions as a
    classifier opened with that prompt. Inputs that do not fit are truncated. The bootstrap
    draws the same record indices for the baseline and every variant (paired, ``seed``).
    """
    t_start = time.perf_counter()
    if n_boot < 1:
        raise ConfigError(f"n_boot is {n_boot}; use at least 1 bootstrap resample (1000 is usual)")
    b = bundle if isinstance(bundle, Bundle) else load_bundle(resolve_bundle_path(bundle))
    if not b.instructions:
        raise ConfigError(f"bundle {b.name} has no rules to audit")
    groups = rule_groups(b.instructions, by, group_size)
    records = list(read_records(data, limit=limit))
    if not records:
        raise DataError(f"{data} has no records")
    if missing := [r.id for r in records if r.label is None]:
        raise DataError(f"{data}: records without a 'label' field, e.g. {missing[:3]}")
    gold = [str(r.label) for r in records]
    if bad := sorted(set(gold) - set(b.labels)):
        raise DataError(f"{data}: gold labels {bad} are not labels of bundle {b.name} {b.labels}")
    base_opts = options or ClassifierOptions()
    opts = dataclasses.replace(
        base_opts,
        max_batch=max(2, base_opts.max_batch),  # the shared layout: a full-size window cache
        truncate=True,
        prefix_cache=False,
        allow_model_mismatch=base_opts.allow_model_mismatch or model is not None,
    )
    texts = [r.text for r in records]
    step = opts.max_batch
    total = (len(groups) + 1) * len(texts)
    preds: dict[int, list[str]] = {}
    with progress_bar("auditing", total, show=progress) as update:
        clf = Classifier.open(b, opts, model=model)
        try:
            prompt_s = (clf.prime_ms or 0.0) / 1000
            done = 0

            def predict() -> list[str]:
                nonlocal done
                out: list[str] = []
                for start in range(0, len(texts), step):
                    out += [p.label for p in clf.classify_many(texts[start : start + step])]
                    done += len(texts[start : start + step])
                    update(done, total)
                return out

            base = predict()
            prompt_tokens = len(clf.prefix_tokens)
            cost: dict[int, tuple[int, int]] = {}
            # the variant leaving out rule i shares tokens with the full prompt, and with any
            # variant leaving out a later rule, up to rule i (the rules after it are renumbered):
            # from the last rule to the first, every switch keeps all it can
            for k in sorted(range(len(groups)), key=lambda k: groups[k][0], reverse=True):
                kept = [ins for j, ins in enumerate(b.instructions) if j not in groups[k]]
                t0 = time.perf_counter()
                n = clf.reprime(render_system_prompt(b.task, kept))
                prompt_s += time.perf_counter() - t0
                cost[k] = (len(clf.prefix_tokens), n)
                preds[k] = predict()
            calibrated, model_name = clf.calibrated, clf.resolved.name
        finally:
            clf.close()
    rep0 = score(gold, base, b.labels)
    effects = []
    for k, members in enumerate(groups):
        # the same seed draws the same records for every variant: all are paired with the baseline
        d = paired_bootstrap_delta(gold, preds[k], base, b.labels, n_boot=n_boot, seed=seed)
        first = b.instructions[members[0]]
        effects.append(
            Effect(
                index=members[0] + 1,
                indices=[i + 1 for i in members],
                ids=[b.instructions[i].id for i in members],
                text=first.text,
                delta_macro_f1=d.macro_f1,
                ci_low=d.macro_f1_ci[0],
                ci_high=d.macro_f1_ci[1],
                delta_accuracy=d.accuracy,
                accuracy_ci=d.accuracy_ci,
                changed=sum(x != y for x, y in zip(preds[k], base, strict=True)),
                prompt_tokens=cost[k][0],
                tokens_decoded=cost[k][1],
                predictions=preds[k],
            )
        )
    decoded = prompt_tokens + sum(e.tokens_decoded for e in effects)
    scratch = prompt_tokens + sum(e.prompt_tokens for e in effects)
    return AuditResult(
        bundle=b.name,
        model=model_name,
        data=str(data),
        by=by,
        n=len(records),
        calibrated=calibrated,
        baseline_macro_f1=rep0.macro_f1,
        baseline_accuracy=rep0.accuracy,
        rules=effects,
        baseline_predictions=base,
        prompt_tokens=prompt_tokens,
        tokens_decoded=decoded,
        tokens_from_scratch=scratch,
        token_ratio=scratch / decoded,
        wall_s=time.perf_counter() - t_start,
        prompt_s=prompt_s,
        n_boot=n_boot,
        seed=seed,
    )


def with_rule_effects(bundle: Bundle, result: AuditResult) -> Bundle:
    """``bundle`` with ``metrics.rule_effects`` from a per-rule audit (``save_bundle`` then
    sets schema_version 2 and the digest). Without metrics, the audit's baseline becomes them."""
    if result.by != "rule":
        raise ConfigError("only a per-rule audit can be written into a bundle; use --by rule")
    if [e.ids for e in result.rules] != [[ins.id] for ins in bundle.instructions]:
        raise ConfigError(f"the audit is not of bundle {bundle.name}'s current rules; rerun it")
    effects = [
        RuleEffect(
            index=e.index,
            id=e.ids[0],
            delta_macro_f1=e.delta_macro_f1,
            ci_low=e.ci_low,
            ci_high=e.ci_high,
            delta_accuracy=e.delta_accuracy,
            n=result.n,
        )
        for e in result.rules
    ]
    metrics = bundle.metrics or Metrics(
        n=result.n,
        macro_f1=result.baseline_macro_f1,
        accuracy=result.baseline_accuracy,
        split=Path(result.data).stem,
    )
    return msgspec.structs.replace(
        bundle, metrics=msgspec.structs.replace(metrics, rule_effects=effects)
    )


def _span(indices: list[int]) -> str:
    if len(indices) == 1:
        return str(indices[0])
    if indices == list(range(indices[0], indices[-1] + 1)):
        return f"{indices[0]}-{indices[-1]}"
    return ",".join(map(str, indices))


def format_audit(res: AuditResult, *, width: int = 60) -> str:
    """A table for people, sorted by effect: the rules whose removal costs most come first."""
    saved = 1 - res.tokens_decoded / res.tokens_from_scratch
    lines = [
        f"bundle {res.bundle}  model {res.model}  data {res.data}  n {res.n}  by {res.by}  "
        f"calibrated {res.calibrated}",
        f"baseline (all rules): macro-F1 {res.baseline_macro_f1:.3f}  "
        f"accuracy {res.baseline_accuracy:.3f}",
        f"prompt tokens decoded {res.tokens_decoded:,} with reuse vs {res.tokens_from_scratch:,} "
        f"from scratch ({res.token_ratio:.2f}x, {saved:.0%} saved); {res.wall_s:.0f} s "
        f"({res.prompt_s:.0f} s on prompts)",
        "",
        "delta = without the rule minus with all rules: negative, the rule helps; "
        f"95% paired bootstrap ({res.n_boot} resamples)",
        f"{'rule':>7}  {'text':<{width}}  {'d macro-F1':>10}  {'95% CI':>16}  {'d acc':>7}  "
        f"{'changed':>7}",
    ]
    ranked = sorted(res.rules, key=lambda e: (e.delta_macro_f1, e.delta_accuracy, e.index))
    for e in ranked:
        text = " ".join(e.text.split())
        text = text if len(text) <= width else text[: width - 3] + "..."
        lines.append(
            f"{_span(e.indices):>7}  {text:<{width}}  {e.delta_macro_f1:>+10.3f}  "
            f"{f'[{e.ci_low:+.3f}, {e.ci_high:+.3f}]':>16}  {e.delta_accuracy:>+7.3f}  "
            f"{e.changed:>7}"
        )
    return "\n".join(lines)
