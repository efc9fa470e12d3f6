"""The whole distillation: extract, embed and cluster, consolidate, budget, conflict loop, emit.

``distill`` wires the stages together (one function per stage in ``stages``), reports what each
spent, and writes the bundle. Every teacher request goes through one content-addressed cache,
so an interrupted run resumes without repeating a finished call and a finished run replays
with no call at all.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import msgspec

from pld import models
from pld.distiller.ask import AskStats
from pld.distiller.backends import DEFAULT_EMBEDDER, TeacherPool
from pld.distiller.cache import ResponseCache
from pld.distiller.extract import ExtractedRule
from pld.distiller.provenance import bundle_metrics, bundle_provenance, describe_backend
from pld.distiller.stages import (
    Clustered,
    Outcome,
    Run,
    cluster,
    consolidate,
    extract,
    load_data,
    refine,
    vote,
)
from pld.distiller.student import StudentRunner
from pld.errors import BundleError
from pld.paths import teacher_cache_dir
from pld.runtime.bundle import Bundle, load_bundle, save_bundle

__all__ = ["DistillResult", "Settings", "distill"]


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
    revise: Literal["list", "targeted"] = "list"  # the conflict loop's revision (loop.Revise)
    # keep a revision only if its paired dev gain is above zero this surely (0: any rise)
    confidence: float = 0.9
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
    data = load_data(task, train, dev, s, say)
    cache_root = Path(cache_dir) if cache_dir else teacher_cache_dir()
    run = Run(s, say, show_progress, ResponseCache(cache_root), concurrency)
    specs = {"teacher": teacher, "synthesis": synthesis or teacher,
             "embedder": embedder or DEFAULT_EMBEDDER}  # fmt: skip
    with contextlib.ExitStack() as stack:
        backends = stack.enter_context(TeacherPool(run.cache, **(teacher_options or {})))
        rules = extract(run, backends.get(specs["teacher"]), data)
        voted, conflicts = vote(run, backends.get(specs["embedder"]), data.task, rules)
        clustered = cluster(run, backends.get(specs["embedder"]), voted)
        instructions = consolidate(run, backends.get(specs["synthesis"]), data.task, voted,
                                   clustered)  # fmt: skip
        runner = stack.enter_context(
            StudentRunner(student, calibration=s.calibration, cache_dir=cache_root / "student")
        )
        outcome = refine(run, runner, backends.get(specs["synthesis"]), data, instructions)
        provenance = bundle_provenance(
            run, data, train, dev, rules, clustered, outcome,
            {k: describe_backend(backends.get(v), v, k) for k, v in specs.items()}, conflicts,
        )  # fmt: skip
        bundle = runner.bundle(data.task, outcome.final, provenance=provenance,
                               metrics=bundle_metrics(outcome),
                               calibration=outcome.score.calibration,
                               prior=outcome.score.prior)  # fmt: skip
        prompt_tokens = runner.count_tokens(bundle.system_prompt)
    unchanged = _write(bundle, Path(out))
    return _result(run, str(out), rules, clustered, outcome, prompt_tokens, unchanged)


def _result(
    run: Run,
    out: str,
    rules: list[ExtractedRule],
    clustered: Clustered,
    outcome: Outcome,
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
