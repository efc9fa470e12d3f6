"""The whole distillation: extract, embed and cluster, consolidate, budget, conflict loop, emit.

``distill`` wires the stages together (one function per stage below), reports what each
spent, and writes the bundle. Every teacher request goes through one content-addressed cache,
so an interrupted run resumes without repeating a finished call and a finished run replays
with no call at all.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec

import pld
from pld import models
from pld.distiller.ask import AskStats
from pld.distiller.backends import DEFAULT_EMBEDDER, TeacherPool
from pld.distiller.cache import ResponseCache
from pld.distiller.cluster import (
    Clustering,
    DbscanSettings,
    choose_settings,
    cluster_vectors,
    median_distance,
)
from pld.distiller.consolidate import consolidate, fit_budget
from pld.distiller.data import Example, Splits, file_digest, load_splits
from pld.distiller.extract import ExtractedRule, extract_rules
from pld.distiller.loop import Round, conflict_loop
from pld.distiller.student import Scored, StudentRunner
from pld.distiller.teacher import Teacher
from pld.distiller.templates import prompt_hashes
from pld.distiller.votes import Conflict, find_conflicts, mask_labels
from pld.errors import BundleError, DistillError
from pld.paths import teacher_cache_dir
from pld.progress import progress
from pld.runtime.bundle import (
    Bundle,
    Instruction,
    Metrics,
    Task,
    load_bundle,
    render_system_prompt,
    save_bundle,
)

__all__ = ["DistillResult", "Settings", "distill"]

Say = Callable[[str], None]

# Below this median pairwise cosine distance an embedder is not telling meanings apart: the
# rules of one task sit at 0.06 to 0.16 as mean-pooled Gemma-3 270M states (0.21 for the eight
# themes of tests/fixtures/rules), at about 0.8 as WordLlama vectors.
_NEARLY_PARALLEL = 0.2


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    """Every knob of a run; all of them are recorded in the bundle's provenance.

    ``eps`` and ``min_samples`` left at None are chosen from the rules' embeddings
    (``cluster.choose_settings``); the provenance's ``clusters`` records the values used.
    """

    limit: int | None = None
    dev_limit: int | None = 300
    seed: int = 0
    eps: float | None = None
    min_samples: int | None = None
    max_rules_per_cluster: int = 40
    max_rounds: int = 2
    loop_limit: int = 100
    max_failures: int = 16
    max_successes: int = 8
    example_chars: int = 3000
    max_rules: int = 40
    prompt_budget: int = 4096
    max_repairs: int = 2
    # "auto": with and without contextual calibration, the better on dev (for this student)
    calibration: Literal["none", "contextual", "fitted", "auto"] = "auto"
    vote: bool = True  # drop the minority where one condition led to several labels
    text_field: str = "text"
    label_field: str = "label"


class DistillResult(msgspec.Struct, kw_only=True, frozen=True):
    """The summary `pld distill` prints as its last line."""

    bundle: str
    rules: int
    prompt_tokens: int
    teacher_calls: int
    cache_hits: int
    tokens_spent: int
    tokens_total: int
    dev_macro_f1_zero_shot: float
    dev_macro_f1_bundle: float
    dev_n: int
    rounds: int
    rounds_accepted: int
    extracted: int
    repaired: int
    failed: int
    clusters: list[int]
    noise: int
    eps: float
    min_samples: int
    pruned: int
    unchanged: bool
    stages: dict[str, AskStats]  # per stage: requests and tokens, cached replies included


def distill(
    *,
    task: str,
    train: str | Path,
    dev: str | Path,
    teacher: str,
    out: str | Path,
    synthesis: str | None = None,
    embedder: str | None = None,
    student: str = models.DEFAULT_MODEL,
    settings: Settings | None = None,
    cache_dir: str | Path | None = None,
    concurrency: int = 8,
    teacher_options: dict[str, object] | None = None,
    show_progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> DistillResult:
    """Distil a bundle for ``task`` from labelled ``train`` data; score it on ``dev``."""
    s = settings or Settings()
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    data = _load_data(task, train, dev, s, say)
    cache_root = Path(cache_dir) if cache_dir else teacher_cache_dir()
    run = _Run(s, say, show_progress, ResponseCache(cache_root), concurrency)
    specs = {"teacher": teacher, "synthesis": synthesis or teacher,
             "embedder": embedder or DEFAULT_EMBEDDER}  # fmt: skip
    with contextlib.ExitStack() as stack:
        backends = stack.enter_context(TeacherPool(run.cache, **(teacher_options or {})))
        rules = _extract(run, backends.get(specs["teacher"]), data)
        voted, conflicts = _vote(run, backends.get(specs["embedder"]), data.task, rules)
        clustered = _cluster(run, backends.get(specs["embedder"]), voted)
        instructions = _consolidate(run, backends.get(specs["synthesis"]), data.task, voted,
                                    clustered)  # fmt: skip
        runner = stack.enter_context(
            StudentRunner(student, calibration=s.calibration, cache_dir=cache_root / "student")
        )
        outcome = _refine(run, runner, backends.get(specs["synthesis"]), data, instructions)
        provenance = _provenance(run, data, train, dev, rules, clustered, outcome,
                                 {k: _describe(backends.get(v), v, k) for k, v in specs.items()},
                                 conflicts)  # fmt: skip
        bundle = runner.bundle(data.task, outcome.final, provenance=provenance,
                               metrics=_metrics(outcome),
                               calibration=outcome.score.calibration,
                               prior=outcome.score.prior)  # fmt: skip
        prompt_tokens = runner.count_tokens(bundle.system_prompt)
    unchanged = _write(bundle, Path(out))
    return _result(run, str(out), rules, clustered, outcome, prompt_tokens, unchanged)


# ---- the run's shared state ------------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    """What every stage needs: the settings, the log, progress bars, the cache, concurrency."""

    s: Settings
    say: Say
    show: bool
    cache: ResponseCache
    concurrency: int
    # per stage, in the order DistillResult.stages reports them
    stats: dict[str, AskStats] = field(
        default_factory=lambda: {k: AskStats() for k in ("extract", "consolidate", "revise")}
    )


@dataclass(frozen=True)
class _Clustered:
    """The rules' vectors, the DBSCAN settings used, the clusters, and the vectors' median
    distance (their spread)."""

    vectors: list[list[float]]
    dbscan: DbscanSettings
    clustering: Clustering
    spread: float


@dataclass
class _Outcome:
    """Where the student stage ended: the final rules and scores, the rounds, what was pruned."""

    final: list[Instruction]
    score: Scored
    zero: Scored
    rounds: list[Round]
    pruned: list[Instruction]


# ---- the stages ------------------------------------------------------------------------------


def _load_data(task: str, train: str | Path, dev: str | Path, s: Settings, say: Say) -> Splits:
    data = load_splits(task, train, dev, limit=s.limit, dev_limit=s.dev_limit,
                       loop_limit=s.loop_limit, seed=s.seed, text_field=s.text_field,
                       label_field=s.label_field)  # fmt: skip
    say(f"task {data.task.name}: {len(data.train)} of {len(data.train_all)} training records, "
        f"{len(data.dev)} of {len(data.dev_all)} dev records (stratified, seed {s.seed})")  # fmt: skip
    return data


def _extract(run: _Run, teacher: Teacher, data: Splits) -> list[ExtractedRule]:
    s, ext = run.s, run.stats["extract"]
    rules = extract_rules(teacher, data.task, data.train, concurrency=run.concurrency,
                          max_repairs=s.max_repairs, stats=ext, show_progress=run.show)  # fmt: skip
    run.say(f"extraction: {len(rules)} rules from {len(data.train)} records "
            f"({ext.repaired} repaired, {ext.failed} failed); {_spent(run.cache)}")  # fmt: skip
    if not rules:
        raise DistillError(
            "the teacher gave no usable rule; check --teacher (see the repair counts above)"
        )
    return rules


def _vote(
    run: _Run, embedder: Teacher, task: Task, rules: list[ExtractedRule]
) -> tuple[list[ExtractedRule], list[Conflict]]:
    """Drop the minority of rules whose condition (labels masked) also led to another label."""
    if not run.s.vote:
        return rules, []
    names = [x.name for x in task.labels]
    conditions = [mask_labels(r.rule, names) for r in rules]
    with progress("embedding conditions", len(rules), show=run.show) as update:
        vectors = embedder.embed(conditions, progress=update)
    conflicts = find_conflicts(conditions, [r.label for r in rules], vectors)
    dropped = {i for c in conflicts for i in c.dropped}
    for c in conflicts:
        verdict = f"kept {c.kept}" if c.kept else "a tie: all dropped"
        run.say(f"conflict: '{c.condition}' led to {c.votes}; {verdict}")
    run.say(f"conflicts: {len(conflicts)} conditions led to several labels; {len(dropped)} of "
            f"{len(rules)} rules dropped")  # fmt: skip
    return [r for i, r in enumerate(rules) if i not in dropped], conflicts


def _cluster(run: _Run, embedder: Teacher, rules: list[ExtractedRule]) -> _Clustered:
    s, say = run.s, run.say
    with progress("embedding rules", len(rules), show=run.show) as update:
        vectors = embedder.embed([r.rule for r in rules], progress=update)
    dbscan = choose_settings(vectors, eps=s.eps, min_samples=s.min_samples)
    eps, min_samples = dbscan.eps, dbscan.min_samples
    say(f"DBSCAN settings: {dbscan.describe()}")
    clustering = cluster_vectors(vectors, eps=eps, min_samples=min_samples)
    say(f"clustering: {len(clustering.clusters)} clusters of sizes {clustering.sizes}, "
        f"{len(clustering.noise)} noise rules dropped (DBSCAN cosine eps {eps:g}, "
        f"min_samples {min_samples}, embedder {embedder.model})")  # fmt: skip
    spread = median_distance(vectors)
    say(f"embeddings: median pairwise cosine distance {spread:.3f}")
    if spread < eps / 4 and len(clustering.clusters) == 1:
        say(f"warning: the embeddings of {embedder.model} are nearly parallel (median distance "
            f"{spread:.3f} against eps {eps:g}), so every rule fell into one cluster; use a "
            f"sentence embedder (--embedder {DEFAULT_EMBEDDER}, the default) or a smaller --eps")  # fmt: skip
    elif spread < _NEARLY_PARALLEL and len(rules) > 1:
        say(f"warning: the embeddings of {embedder.model} are nearly parallel (median distance "
            f"{spread:.3f}), so clusters follow wording more than meaning; a sentence embedder "
            f"(--embedder {DEFAULT_EMBEDDER}, the default) separates rules by meaning")  # fmt: skip
    if not clustering.clusters:
        raise DistillError(
            f"DBSCAN found no cluster among {len(rules)} rules (eps {eps:g}, min_samples "
            f"{min_samples}); use more training records (--limit), a lower --min-samples "
            "or a larger --eps (pld distill cluster shows the rules' distances)"
        )
    return _Clustered(vectors, dbscan, clustering, spread)


def _consolidate(
    run: _Run, synthesis: Teacher, task: Task, rules: list[ExtractedRule], clustered: _Clustered
) -> list[Instruction]:
    con = run.stats["consolidate"]
    instructions = consolidate(
        synthesis, task, rules, clustered.vectors, clustered.clustering,
        max_rules_per_cluster=run.s.max_rules_per_cluster, concurrency=run.concurrency,
        max_repairs=run.s.max_repairs, stats=con, show_progress=run.show,
    )  # fmt: skip
    run.say(f"consolidation: {len(instructions)} instructions "
            f"({con.failed} clusters failed); {_spent(run.cache)}")  # fmt: skip
    return instructions


def _refine(
    run: _Run,
    runner: StudentRunner,
    synthesis: Teacher,
    data: Splits,
    instructions: list[Instruction],
) -> _Outcome:
    """Fit the prompt budget, score zero-shot and with the rules, run the conflict loop."""
    s, say, task, show = run.s, run.say, data.task, run.show
    instructions, pruned = _budget(runner, task, instructions, s.prompt_budget, say)
    zero = runner.evaluate(task, [], data.dev, label="student zero-shot on dev", show_progress=show)
    first = runner.evaluate(task, instructions, data.dev, label="student with rules on dev",
                            show_progress=show)  # fmt: skip
    say(f"dev Macro-F1: zero-shot {zero.macro_f1:.3f} ({zero.calibration} calibration), "
        f"consolidated rules {first.macro_f1:.3f} ({first.calibration})")  # fmt: skip
    final, final_score, rounds = conflict_loop(
        synthesis, runner, task, instructions, data.loop, data.dev, dev_score=first,
        max_rounds=s.max_rounds, max_failures=s.max_failures, max_successes=s.max_successes,
        max_input_chars=s.example_chars, max_rules=s.max_rules, max_repairs=s.max_repairs,
        stats=run.stats["revise"], show_progress=show,
    )  # fmt: skip
    for r in rounds:
        after = "-" if r.dev_macro_f1_after is None else f"{r.dev_macro_f1_after:.3f}"
        say(f"round {r.round}: {r.train_errors}/{r.train_n} training errors, dev Macro-F1 "
            f"{r.dev_macro_f1_before:.3f} -> {after}, {'accepted' if r.accepted else 'rejected'} "
            f"({r.reason})")  # fmt: skip
    say(f"conflict loop: {len(rounds)} rounds, {sum(r.accepted for r in rounds)} accepted; "
        f"{_spent(run.cache)}")  # fmt: skip
    final, more = _budget(runner, task, final, s.prompt_budget, say)
    if more:
        pruned += more
        final_score = runner.evaluate(task, final, data.dev, label="student on dev after pruning",
                                      show_progress=show)  # fmt: skip
    if (c := final_score.choice) is not None:
        tried = ", ".join(f"{k} {v:.3f}" for k, v in c.macro_f1.items())
        say(f"calibration for {c.model} with the final rules: {final_score.calibration} "
            f"(dev Macro-F1 {tried}{'' if s.calibration == 'auto' else '; set by --calibration'})")  # fmt: skip
    if final_score.macro_f1 < zero.macro_f1:
        say(f"warning: with its rules the student scores below zero-shot on dev (Macro-F1 "
            f"{final_score.macro_f1:.3f} < {zero.macro_f1:.3f}); the rules mislead this student: "
            "try a stronger teacher, more training records or more rounds")  # fmt: skip
    return _Outcome(final, final_score, zero, rounds, pruned)


def _budget(
    runner: StudentRunner,
    task: Task,
    instructions: list[Instruction],
    budget: int,
    say: Say,
) -> tuple[list[Instruction], list[Instruction]]:
    kept, dropped = fit_budget(task, instructions, budget, runner.count_tokens)
    if dropped:
        say(f"prompt budget {budget} tokens: pruned {len(dropped)} lowest-support rules")
    if runner.count_tokens(render_system_prompt(task, kept)) > budget:
        raise DistillError(
            f"the task's description and labels alone exceed --prompt-budget {budget} tokens; "
            "raise the budget"
        )
    return [msgspec.structs.replace(x, id=f"r{i}") for i, x in enumerate(kept, 1)], dropped


# ---- the bundle and the summary ----------------------------------------------------------------


def _provenance(
    run: _Run,
    data: Splits,
    train: str | Path,
    dev: str | Path,
    rules: list[ExtractedRule],
    clustered: _Clustered,
    outcome: _Outcome,
    backends: dict[str, dict[str, str]],
    conflicts: list[Conflict],
) -> dict[str, Any]:
    """Everything the bundle records about how it was made (the order is the file's order)."""
    clustering = clustered.clustering
    return {
        "distiller_version": pld.__version__,
        **backends,  # teacher, synthesis, embedder
        "datasets": {
            "train": _dataset(train, data.train_all, data.train),
            "dev": _dataset(dev, data.dev_all, data.dev),
        },
        "prompts": prompt_hashes(),
        "settings": msgspec.to_builtins(run.s),
        "extraction": {"asked": len(data.train), "rules": len(rules)},
        "conflicts": [msgspec.to_builtins(c) for c in conflicts],
        "clusters": {
            "sizes": clustering.sizes,
            "noise": len(clustering.noise),
            "median_distance": round(clustered.spread, 4),
            **msgspec.to_builtins(clustered.dbscan),  # eps, min_samples, where each came from
        },
        "calibration": _calibration(outcome.score),
        "pruned": [x.text for x in outcome.pruned],
        "rounds": [msgspec.to_builtins(r) for r in outcome.rounds],
    }


def _calibration(final: Scored) -> dict[str, Any]:
    """The calibration the bundle uses, the model it was chosen on, and what each one scored."""
    c = final.choice
    if c is None:
        return {"choice": final.calibration}
    return {"choice": final.calibration, "model": c.model, "sha256": c.sha256, "split": "dev",
            "n": c.n, "macro_f1": {k: round(v, 6) for k, v in c.macro_f1.items()},
            "accuracy": {k: round(v, 6) for k, v in c.accuracy.items()}}  # fmt: skip


def _dataset(path: str | Path, records: list[Example], used: list[Example]) -> dict[str, Any]:
    return {"file": Path(path).name, "digest": file_digest(path), "records": len(records),
            "used": len(used)}  # fmt: skip


def _metrics(outcome: _Outcome) -> Metrics:
    final, zero = outcome.score, outcome.zero
    return Metrics(
        n=final.n, macro_f1=round(final.macro_f1, 6), accuracy=round(final.accuracy, 6),
        zero_shot_macro_f1=round(zero.macro_f1, 6), zero_shot_accuracy=round(zero.accuracy, 6),
        split="dev",
    )  # fmt: skip


def _result(
    run: _Run,
    out: str,
    rules: list[ExtractedRule],
    clustered: _Clustered,
    outcome: _Outcome,
    prompt_tokens: int,
    unchanged: bool,
) -> DistillResult:
    stats, stages = run.cache.stats, run.stats
    rounds, clustering = outcome.rounds, clustered.clustering
    return DistillResult(
        bundle=out, rules=len(outcome.final), prompt_tokens=prompt_tokens,
        teacher_calls=stats.calls, cache_hits=stats.hits,
        tokens_spent=stats.prompt_tokens + stats.completion_tokens,
        tokens_total=stats.prompt_tokens + stats.completion_tokens + stats.hit_tokens,
        dev_macro_f1_zero_shot=outcome.zero.macro_f1, dev_macro_f1_bundle=outcome.score.macro_f1,
        dev_n=outcome.score.n, rounds=len(rounds), rounds_accepted=sum(r.accepted for r in rounds),
        extracted=len(rules), repaired=sum(x.repaired for x in stages.values()),
        failed=sum(x.failed for x in stages.values()), stages=stages,
        clusters=clustering.sizes, noise=len(clustering.noise), eps=clustering.eps,
        min_samples=clustering.min_samples, pruned=len(outcome.pruned),
        unchanged=unchanged,
    )  # fmt: skip


def _describe(teacher: Teacher, spec: str, role: str) -> dict[str, str]:
    """A backend in the provenance; the embedder's entry adds its spec and package version."""
    described = {"backend": spec.strip().split(":", 1)[0], "model": teacher.model}
    if role == "embedder":
        described |= {"spec": spec.strip(), **teacher.describe()}
    return described


def _spent(cache: ResponseCache) -> str:
    st = cache.stats
    spent = st.prompt_tokens + st.completion_tokens
    return (f"{st.calls} calls, {st.hits} cache hits, {spent:,} tokens spent this run "
            f"({spent + st.hit_tokens:,} with the cached replies)")  # fmt: skip


def _write(bundle: Bundle, out: Path) -> bool:
    """Save the bundle; an existing file that differs only in ``created_at`` is kept as is, so a
    replayed run leaves the same bytes. Returns whether it was kept.
    """
    if out.exists():
        try:
            old = load_bundle(out)
        except BundleError:
            old = None
        if old is not None:
            same = msgspec.structs.replace(bundle, created_at=old.created_at, digest=None)
            if msgspec.structs.replace(old, digest=None) == same:
                return True
    save_bundle(bundle, out)
    return False
