"""The student in the loop: the runtime's Classifier run over labelled examples.

One model load serves every rule set tried; each rule set gets a fresh context primed with
its own system prompt. Knows nothing about teachers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np

from pld.distiller.data import Example
from pld.files import atomic_write
from pld.metrics import score
from pld.progress import progress
from pld.runtime import (
    Bundle,
    CalibrationChoice,
    Classifier,
    ClassifierOptions,
    Instruction,
    Model,
    RuntimeSettings,
    Student,
    Task,
    apply_prior,
    choose_calibration,
)
from pld.runtime.calibration import Calibration

__all__ = ["Scored", "StudentRunner"]


class Scored(msgspec.Struct, frozen=True, kw_only=True):
    """Predictions of one rule set on a split, with their Macro-F1 and accuracy, and the
    calibration they were made with (with ``auto``, the better one on this split)."""

    predictions: list[str]
    macro_f1: float
    accuracy: float
    n: int
    calibration: Calibration = "none"
    choice: CalibrationChoice | None = None  # every calibration's scores, when measured
    prior: list[float] | None = None  # the fitted prior, when calibration is "fitted"


class _Probs(msgspec.Struct, frozen=True):
    """What a rule set's classifier gave on a split: uncalibrated label probabilities per input
    and the content-free prior, so that both calibrations are scored from one pass."""

    probs: list[list[float]]
    prior: list[float]


class StudentRunner:
    """Runs one student model with any rule set for a task.

    ``calibration`` "auto" scores each rule set with no calibration, contextual calibration and
    a prior fitted on the split (cross-validated), and keeps the best on each split: calibration
    is a property of a prompt and a model, chosen by measurement
    (``pld.runtime.choose_calibration``).
    """

    def __init__(
        self,
        model: str,
        *,
        n_threads: int = 0,
        n_gpu_layers: int = 0,
        calibration: Calibration | Literal["auto"] = "auto",
        max_input_tokens: int = 2048,
        cache_dir: Path | None = None,
    ) -> None:
        self.cache_dir = cache_dir
        self.model = Model.open(model, n_gpu_layers=n_gpu_layers)
        self.resolved = self.model.resolved
        self.calibration = calibration
        # every rule set gets a fresh context on the shared weights; nothing is worth saving
        self.options = ClassifierOptions(
            n_threads=n_threads,
            n_gpu_layers=n_gpu_layers,
            max_input_tokens=max_input_tokens,
            prefix_cache=False,
            truncate=True,
            calibrate=False,  # the prior is applied here, so both variants come from one pass
        )

    def bundle(
        self,
        task: Task,
        instructions: Sequence[Instruction],
        *,
        calibration: Calibration = "none",
        prior: list[float] | None = None,
        **fields: Any,
    ) -> Bundle:
        """A bundle of this task and rule set for this student."""
        return Bundle.create(
            name=task.name,
            task=task,
            instructions=list(instructions),
            student=Student(model=self.resolved.name, sha256=self.resolved.sha256),
            runtime=RuntimeSettings(calibration=calibration, prior=prior),
            **fields,
        )

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` in the student's vocabulary."""
        return len(self.model.tokenize(text, special=False))

    def evaluate(
        self,
        task: Task,
        instructions: Sequence[Instruction],
        examples: Sequence[Example],
        *,
        label: str,
        show_progress: bool = True,
    ) -> Scored:
        """Classify ``examples`` with the rule set; score against their gold labels.

        With a ``cache_dir``, the probabilities are stored under a key of everything they depend
        on (model file, system prompt, settings, llama.cpp version, inputs), so a resumed or
        replayed run does not classify the same data with the same rules again.
        """
        bundle = self.bundle(task, instructions)
        texts = [ex.text for ex in examples]
        labels = bundle.labels
        path = self._cache_path(bundle.system_prompt, texts)
        got = self._cached(path, len(texts), len(labels))
        if got is None:
            probs: list[list[float]] = []
            with Classifier(bundle, self.model, self.options) as clf:
                with progress(label, len(examples), show=show_progress) as update:
                    for text in texts:
                        got_p = clf.classify(text).probs
                        probs.append([got_p[name] for name in labels])
                        update(len(probs), len(examples))
                prior = [float(x) for x in clf.content_free_prior()]
            got = _Probs(probs=probs, prior=prior)
            if path is not None:
                atomic_write(path, msgspec.json.encode(got))
        gold = [ex.label for ex in examples]
        choice = choose_calibration(
            np.asarray(got.probs), np.asarray(got.prior), gold, labels, self.resolved
        )
        use: Calibration = choice.choice if self.calibration == "auto" else self.calibration
        if use == "fitted" and choice.prior is None:
            use = "none"  # too few records to fit a prior (choose_calibration says how many)
        probs_np = np.asarray(got.probs, dtype=np.float64)
        if use == "contextual":
            probs_np = apply_prior(probs_np, np.asarray(got.prior, dtype=np.float64))
        elif use == "fitted":
            probs_np = apply_prior(probs_np, np.asarray(choice.prior, dtype=np.float64))
        preds = [labels[int(i)] for i in probs_np.argmax(axis=1)]
        rep = score(gold, preds, labels)
        return Scored(
            predictions=preds,
            # a fitted prior scores its own records too well: its score is the cross-validated
            macro_f1=choice.macro_f1[use] if use == "fitted" else rep.macro_f1,
            accuracy=choice.accuracy[use] if use == "fitted" else rep.accuracy,
            n=rep.n,
            calibration=use,
            choice=choice,
            prior=choice.prior if use == "fitted" else None,
        )

    def _cache_path(self, system_prompt: str, texts: list[str]) -> Path | None:
        if self.cache_dir is None:
            return None
        import llama_cpp

        key = msgspec.json.encode({
            "model_sha256": self.resolved.sha256, "system_prompt": system_prompt,
            "stored": "uncalibrated probabilities and prior",
            "max_input_tokens": self.options.max_input_tokens,
            "llama_cpp": llama_cpp.__version__, "texts": texts,
        })  # fmt: skip
        return self.cache_dir / f"{hashlib.sha256(key).hexdigest()}.json"

    @staticmethod
    def _cached(path: Path | None, n: int, k: int) -> _Probs | None:
        if path is None:
            return None
        try:
            got = msgspec.json.decode(path.read_bytes(), type=_Probs)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            return None  # absent or damaged: classify again
        ok = len(got.probs) == n and len(got.prior) == k and all(len(r) == k for r in got.probs)
        return got if ok else None

    def close(self) -> None:
        """Free the student model."""
        self.model.close()

    def __enter__(self) -> StudentRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
