"""The whole distillation: extract, embed and cluster, consolidate, budget, conflict loop, emit.

``distill`` wires the stages together, reports what each spent, and writes the bundle. Every
teacher request goes through one content-addressed cache, so an interrupted run resumes
without repeating a finished call and a finished run replays with no call at all.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import msgspec

from pld import models
from pld.distiller.ask import AskStats, Teacher, progress, prompt_hashes
from pld.distiller.backends import open_teacher
from pld.distiller.cache import ResponseCache
from pld.distiller.cluster import cluster_vectors, median_distance
from pld.distiller.consolidate import consolidate, fit_budget
from pld.distiller.data import file_digest, load_examples, load_task, stratified_sample
from pld.distiller.extract import extract_rules
from pld.distiller.loop import conflict_loop
from pld.distiller.student import StudentRunner
from pld.errors import PldError
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

DISTILLER_VERSION = "0.1.0"


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    """Every knob of a run; all of them are recorded in the bundle's provenance."""

    limit: int | None = None
    dev_limit: int | None = 300
    seed: int = 0
    eps: float = 0.4
    min_samples: int = 6
    max_rules_per_cluster: int = 40
    max_rounds: int = 2
    loop_limit: int = 100
    max_failures: int = 16
    max_successes: int = 8
    example_chars: int = 3000
    max_rules: int = 40
    prompt_budget: int = 4096
    max_repairs: int = 2
    calibration: Literal["none", "contextual"] = "none"
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
    spec = load_task(task)
    labels = [x.name for x in spec.labels]
    fields = {"text_field": s.text_field, "label_field": s.label_field}
    train_all = load_examples(train, labels, **fields)
    dev_all = load_examples(dev, labels, **fields)
    train_set = stratified_sample(train_all, s.limit, seed=s.seed)
    dev_set = stratified_sample(dev_all, s.dev_limit, seed=s.seed)
    loop_set = stratified_sample(train_set, s.loop_limit, seed=s.seed)
    say(f"task {spec.name}: {len(train_set)} of {len(train_all)} training records, "
        f"{len(dev_set)} of {len(dev_all)} dev records (stratified, seed {s.seed})")  # fmt: skip

    cache_root = Path(cache_dir) if cache_dir else models.cache_dir() / "teacher-cache"
    cache = ResponseCache(cache_root)
    opened: dict[str, Teacher] = {}

    def backend(which: str) -> Teacher:
        if which not in opened:
            opened[which] = open_teacher(which, cache=cache, **(teacher_options or {}))
        return opened[which]

    embedder = embedder or f"local:{student}"
    synthesis = synthesis or teacher
    ext, con, rev = AskStats(), AskStats(), AskStats()
    runner: StudentRunner | None = None
    try:
        t = backend(teacher)
        rules = extract_rules(t, spec, train_set, concurrency=concurrency,
                              max_repairs=s.max_repairs, stats=ext, show_progress=show_progress)  # fmt: skip
        say(f"extraction: {len(rules)} rules from {len(train_set)} records "
            f"({ext.repaired} repaired, {ext.failed} failed); {_spent(cache)}")  # fmt: skip
        if not rules:
            raise PldError(
                "the teacher gave no usable rule; check --teacher (see the repair counts above)"
            )

        vectors = _embed(backend(embedder), [r.rule for r in rules], show_progress)
        clustering = cluster_vectors(vectors, eps=s.eps, min_samples=s.min_samples)
        say(f"clustering: {len(clustering.clusters)} clusters of sizes {clustering.sizes}, "
            f"{len(clustering.noise)} noise rules dropped (DBSCAN cosine eps {s.eps}, "
            f"min_samples {s.min_samples}, embedder {backend(embedder).model})")  # fmt: skip
        spread = median_distance(vectors)
        say(f"embeddings: median pairwise cosine distance {spread:.3f}")
        if spread < s.eps / 4 and len(clustering.clusters) == 1:
            say(f"warning: the embeddings of {backend(embedder).model} are nearly parallel "
                f"(median distance {spread:.3f} against eps {s.eps}), so every rule fell into one "
                "cluster; use a sentence-embedding model (--embedder openai:MODEL@URL) or a "
                "smaller --eps")  # fmt: skip
        if not clustering.clusters:
            raise PldError(
                f"DBSCAN found no cluster among {len(rules)} rules (eps {s.eps}, min_samples "
                f"{s.min_samples}); use more training records (--limit), a lower --min-samples "
                "or a larger --eps"
            )

        instructions = consolidate(
            backend(synthesis), spec, rules, vectors, clustering,
            max_rules_per_cluster=s.max_rules_per_cluster, concurrency=concurrency,
            max_repairs=s.max_repairs, stats=con, show_progress=show_progress,
        )  # fmt: skip
        say(f"consolidation: {len(instructions)} instructions "
            f"({con.failed} clusters failed); {_spent(cache)}")  # fmt: skip

        runner = StudentRunner(student, calibration=s.calibration, cache_dir=cache_root / "student")
        instructions, pruned = _budget(runner, spec, instructions, s.prompt_budget, say)
        zero = runner.evaluate(
            spec, [], dev_set, label="student zero-shot on dev", show_progress=show_progress
        )
        first = runner.evaluate(spec, instructions, dev_set, label="student with rules on dev",
                                show_progress=show_progress)  # fmt: skip
        say(f"dev Macro-F1: zero-shot {zero.macro_f1:.3f}, consolidated rules {first.macro_f1:.3f}")
        final, final_score, rounds = conflict_loop(
            backend(synthesis), runner, spec, instructions, loop_set, dev_set, dev_score=first,
            max_rounds=s.max_rounds, max_failures=s.max_failures, max_successes=s.max_successes,
            max_input_chars=s.example_chars,
            max_rules=s.max_rules, max_repairs=s.max_repairs, stats=rev, show_progress=show_progress,
        )  # fmt: skip
        for r in rounds:
            after = "-" if r.dev_macro_f1_after is None else f"{r.dev_macro_f1_after:.3f}"
            say(f"round {r.round}: {r.train_errors}/{r.train_n} training errors, dev Macro-F1 "
                f"{r.dev_macro_f1_before:.3f} -> {after}, {'accepted' if r.accepted else 'rejected'} "
                f"({r.reason})")  # fmt: skip
        say(
            f"conflict loop: {len(rounds)} rounds, {sum(r.accepted for r in rounds)} accepted; {_spent(cache)}"
        )
        final, more = _budget(runner, spec, final, s.prompt_budget, say)
        if more:
            pruned += more
            final_score = runner.evaluate(spec, final, dev_set, label="student on dev after pruning",
                                          show_progress=show_progress)  # fmt: skip

        if final_score.macro_f1 < zero.macro_f1:
            say(f"warning: with its rules the student scores below zero-shot on dev (Macro-F1 "
                f"{final_score.macro_f1:.3f} < {zero.macro_f1:.3f}); the rules mislead this student: "
                "try a stronger teacher, more training records or more rounds")  # fmt: skip
        provenance = {
            "distiller_version": DISTILLER_VERSION,
            "teacher": _describe(backend(teacher), teacher),
            "synthesis": _describe(backend(synthesis), synthesis),
            "embedder": _describe(backend(embedder), embedder),
            "datasets": {
                "train": {
                    "file": Path(train).name,
                    "digest": file_digest(train),
                    "records": len(train_all),
                    "used": len(train_set),
                },
                "dev": {
                    "file": Path(dev).name,
                    "digest": file_digest(dev),
                    "records": len(dev_all),
                    "used": len(dev_set),
                },
            },  # fmt: skip
            "prompts": prompt_hashes(),
            "settings": msgspec.to_builtins(s),
            "extraction": {"asked": len(train_set), "rules": len(rules)},
            "clusters": {
                "sizes": clustering.sizes,
                "noise": len(clustering.noise),
                "median_distance": round(spread, 4),
            },
            "pruned": [x.text for x in pruned],
            "rounds": [msgspec.to_builtins(r) for r in rounds],
        }
        metrics = Metrics(
            n=final_score.n, macro_f1=round(final_score.macro_f1, 6),
            accuracy=round(final_score.accuracy, 6), zero_shot_macro_f1=round(zero.macro_f1, 6),
            zero_shot_accuracy=round(zero.accuracy, 6), split="dev",
        )  # fmt: skip
        bundle = runner.bundle(spec, final, provenance=provenance, metrics=metrics)
        prompt_tokens = runner.count_tokens(bundle.system_prompt)
    finally:
        for b in opened.values():
            b.close()
        if runner is not None:
            runner.close()

    unchanged = _write(bundle, Path(out))
    stats = cache.stats
    return DistillResult(
        bundle=str(out), rules=len(final), prompt_tokens=prompt_tokens,
        teacher_calls=stats.calls, cache_hits=stats.hits,
        tokens_spent=stats.prompt_tokens + stats.completion_tokens,
        tokens_total=stats.prompt_tokens + stats.completion_tokens + stats.hit_tokens,
        dev_macro_f1_zero_shot=zero.macro_f1, dev_macro_f1_bundle=final_score.macro_f1,
        dev_n=final_score.n, rounds=len(rounds), rounds_accepted=sum(r.accepted for r in rounds),
        extracted=len(rules), repaired=ext.repaired + con.repaired + rev.repaired,
        failed=ext.failed + con.failed + rev.failed,
        stages={"extract": ext, "consolidate": con, "revise": rev},
        clusters=clustering.sizes, noise=len(clustering.noise), pruned=len(pruned),
        unchanged=unchanged,
    )  # fmt: skip


def _budget(
    runner: StudentRunner,
    task: Task,
    instructions: list[Instruction],
    budget: int,
    say: Callable[[str], None],
) -> tuple[list[Instruction], list[Instruction]]:
    kept, dropped = fit_budget(task, instructions, budget, runner.count_tokens)
    if dropped:
        say(f"prompt budget {budget} tokens: pruned {len(dropped)} lowest-support rules")
    if runner.count_tokens(render_system_prompt(task, kept)) > budget:
        raise PldError(
            f"the task's description and labels alone exceed --prompt-budget {budget} tokens; "
            "raise the budget"
        )
    return [msgspec.structs.replace(x, id=f"r{i}") for i, x in enumerate(kept, 1)], dropped


def _embed(embedder: Teacher, texts: list[str], show: bool, step: int = 64) -> list[list[float]]:
    out: list[list[float]] = []
    with progress("embedding rules", len(texts), show=show) as update:
        for start in range(0, len(texts), step):
            out += embedder.embed(texts[start : start + step])
            update(len(out), len(texts))
    return out


def _describe(teacher: Teacher, spec: str) -> dict[str, str]:
    return {"backend": spec.split(":", 1)[0], "model": teacher.model}


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
        except PldError:
            old = None
        if old is not None:
            same = msgspec.structs.replace(bundle, created_at=old.created_at, digest=None)
            if msgspec.structs.replace(old, digest=None) == same:
                return True
    save_bundle(bundle, out)
    return False
