"""The stages of a distillation run: load the data, extract, vote, embed and cluster, consolidate,
fit the budget and refine with the student, each logging what it did and spent; and ``Run``,
the state they share. ``pipeline.distill`` opens the backends and calls them in order; the
bundle's provenance and the summary are ``provenance``'s and ``pipeline``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from pld.distiller.ask import AskStats
from pld.distiller.backends import DEFAULT_EMBEDDER
from pld.distiller.cache import ResponseCache
from pld.distiller.cluster import (
    Clustering,
    DbscanSettings,
    choose_settings,
    cluster_vectors,
    median_distance,
)
from pld.distiller.consolidate import consolidate as consolidate_clusters
from pld.distiller.consolidate import fit_budget
from pld.distiller.data import Splits, load_splits
from pld.distiller.extract import ExtractedRule, extract_rules
from pld.distiller.loop import Round, conflict_loop, interval_level
from pld.distiller.student import Scored, StudentRunner
from pld.distiller.teacher import Teacher
from pld.distiller.votes import Conflict, find_conflicts, mask_labels
from pld.errors import DistillError
from pld.progress import progress
from pld.runtime.bundle import Instruction, Task, render_system_prompt

if TYPE_CHECKING:
    from pld.distiller.pipeline import Settings  # pipeline imports this module

__all__ = [
    "Clustered",
    "Outcome",
    "Run",
    "Say",
    "cluster",
    "consolidate",
    "extract",
    "load_data",
    "refine",
    "vote",
]

Say = Callable[[str], None]

# Below this median pairwise cosine distance an embedder is not telling meanings apart: the
# rules of one task sit at 0.06 to 0.16 as mean-pooled Gemma-3 270M states (0.21 for the eight
# themes of tests/fixtures/rules), at about 0.8 as WordLlama vectors.
_NEARLY_PARALLEL = 0.2


# ---- the run's shared state ------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
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
class Clustered:
    """The rules' vectors, the DBSCAN settings used, the clusters, and the vectors' median
    distance (their spread)."""

    vectors: list[list[float]]
    dbscan: DbscanSettings
    clustering: Clustering
    spread: float


@dataclass
class Outcome:
    """Where the student stage ended: the final rules and scores, the rounds, what was pruned."""

    final: list[Instruction]
    score: Scored
    zero: Scored
    rounds: list[Round]
    pruned: list[Instruction]


# ---- the stages ------------------------------------------------------------------------------


def load_data(task: str, train: str | Path, dev: str | Path, s: Settings, say: Say) -> Splits:
    """Load and sample the train and dev splits; say how many records each stage sees."""
    data = load_splits(task, train, dev, limit=s.limit, dev_limit=s.dev_limit,
                       loop_limit=s.loop_limit, seed=s.seed, text_field=s.text_field,
                       label_field=s.label_field)  # fmt: skip
    say(f"task {data.task.name}: {len(data.train)} of {len(data.train_all)} training records, "
        f"{len(data.dev)} of {len(data.dev_all)} dev records (stratified, seed {s.seed})")  # fmt: skip
    return data


def extract(run: Run, teacher: Teacher, data: Splits) -> list[ExtractedRule]:
    """One rule per training record from the teacher; raises when none is usable."""
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


def vote(
    run: Run, embedder: Teacher, task: Task, rules: list[ExtractedRule]
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


def cluster(run: Run, embedder: Teacher, rules: list[ExtractedRule]) -> Clustered:
    """Embed the rules and cluster them with DBSCAN; warn when the embeddings are too alike."""
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
    return Clustered(vectors, dbscan, clustering, spread)


def consolidate(
    run: Run, synthesis: Teacher, task: Task, rules: list[ExtractedRule], clustered: Clustered
) -> list[Instruction]:
    """One instruction per cluster from the synthesis teacher."""
    con = run.stats["consolidate"]
    instructions = consolidate_clusters(
        synthesis, task, rules, clustered.vectors, clustered.clustering,
        max_rules_per_cluster=run.s.max_rules_per_cluster, concurrency=run.concurrency,
        max_repairs=run.s.max_repairs, stats=con, show_progress=run.show,
    )  # fmt: skip
    run.say(f"consolidation: {len(instructions)} instructions "
            f"({con.failed} clusters failed); {_spent(run.cache)}")  # fmt: skip
    return instructions


def refine(
    run: Run,
    runner: StudentRunner,
    synthesis: Teacher,
    data: Splits,
    instructions: list[Instruction],
) -> Outcome:
    """Fit the prompt budget, score zero-shot and with the rules, run the conflict loop."""
    s, say, task, show = run.s, run.say, data.task, run.show
    instructions, pruned = _budget(runner, task, instructions, s.prompt_budget, say)
    zero = runner.evaluate(task, [], data.dev, label="student zero-shot on dev", show_progress=show)
    first = runner.evaluate(task, instructions, data.dev, label="student with rules on dev",
                            show_progress=show)  # fmt: skip
    say(f"dev Macro-F1: zero-shot {zero.macro_f1:.3f} ({zero.calibration} calibration), "
        f"consolidated rules {first.macro_f1:.3f} ({first.calibration})")  # fmt: skip
    if s.revise == "targeted" and s.max_rounds and first.macro_f1 < zero.macro_f1:
        # adding rules one at a time to a list that is worse than none polishes the wrong start
        say(f"the consolidated rules score below zero-shot on dev: the targeted loop starts from "
            f"no rules and keeps the {len(instructions)} consolidated ones out")  # fmt: skip
        instructions, first = [], zero
    final, final_score, rounds = conflict_loop(
        synthesis, runner, task, instructions, data.loop, data.dev, dev_score=first,
        max_rounds=s.max_rounds, max_failures=s.max_failures, max_successes=s.max_successes,
        max_input_chars=s.example_chars, max_rules=s.max_rules, max_repairs=s.max_repairs,
        revise=s.revise, confidence=s.confidence, stats=run.stats["revise"], show_progress=show,
    )  # fmt: skip
    for r in rounds:
        after = "-" if r.dev_macro_f1_after is None else f"{r.dev_macro_f1_after:.3f}"
        if r.dev_delta_ci is not None:
            level = interval_level(s.confidence)
            after += f" (paired {level:.0%} [{r.dev_delta_ci[0]:+.3f}, {r.dev_delta_ci[1]:+.3f}])"
        say(f"round {r.round}: {r.train_errors}/{r.train_n} training errors, dev Macro-F1 "
            f"{r.dev_macro_f1_before:.3f} -> {after}, {'accepted' if r.accepted else 'rejected'} "
            f"({r.reason})")  # fmt: skip
        if r.target is not None:
            say(f"  target: {r.target}" + (f"; rule tried: {r.rule}" if r.rule else ""))
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
    if not final:
        say("no rule kept: the bundle is the task's zero-shot prompt (nothing the teacher wrote "
            "beat it on dev)")  # fmt: skip
    if final_score.macro_f1 < zero.macro_f1:
        say(f"warning: with its rules the student scores below zero-shot on dev (Macro-F1 "
            f"{final_score.macro_f1:.3f} < {zero.macro_f1:.3f}); the rules mislead this student: "
            "try a stronger teacher, more training records or more rounds")  # fmt: skip
    return Outcome(final, final_score, zero, rounds, pruned)


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


def _spent(cache: ResponseCache) -> str:
    st = cache.stats
    spent = st.prompt_tokens + st.completion_tokens
    return (f"{st.calls} calls, {st.hits} cache hits, {spent:,} tokens spent this run "
            f"({spent + st.hit_tokens:,} with the cached replies)")  # fmt: skip
