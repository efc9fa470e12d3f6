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

from pld.distiller.data import Example
from pld.files import atomic_write
from pld.metrics import score
from pld.progress import progress
from pld.runtime import (
    Bundle,
    Classifier,
    ClassifierOptions,
    Instruction,
    Model,
    RuntimeSettings,
    Student,
    Task,
)

__all__ = ["Scored", "StudentRunner"]


class Scored(msgspec.Struct, frozen=True, kw_only=True):
    """Predictions of one rule set on a split, with their Macro-F1 and accuracy."""

    predictions: list[str]
    macro_f1: float
    accuracy: float
    n: int


class StudentRunner:
    """Runs one student model with any rule set for a task."""

    def __init__(
        self,
        model: str,
        *,
        n_threads: int = 0,
        n_gpu_layers: int = 0,
        calibration: Literal["none", "contextual"] = "none",
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
        )

    def bundle(self, task: Task, instructions: Sequence[Instruction], **fields: Any) -> Bundle:
        """A bundle of this task and rule set for this student."""
        return Bundle.create(
            name=task.name,
            task=task,
            instructions=list(instructions),
            student=Student(model=self.resolved.name, sha256=self.resolved.sha256),
            runtime=RuntimeSettings(calibration=self.calibration),
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

        With a ``cache_dir``, predictions are stored under a key of everything they depend on
        (model file, system prompt, settings, llama.cpp version, inputs), so a resumed or
        replayed run does not classify the same data with the same rules again.
        """
        bundle = self.bundle(task, instructions)
        texts = [ex.text for ex in examples]
        path = self._cache_path(bundle.system_prompt, texts)
        preds = self._cached(path, len(texts), bundle.labels)
        if preds is None:
            preds = []
            with Classifier(bundle, self.model, self.options) as clf:
                with progress(label, len(examples), show=show_progress) as update:
                    for text in texts:
                        preds.append(clf.classify(text).label)
                        update(len(preds), len(examples))
            if path is not None:
                atomic_write(path, msgspec.json.encode(preds))
        rep = score([ex.label for ex in examples], preds, [x.name for x in task.labels])
        return Scored(predictions=preds, macro_f1=rep.macro_f1, accuracy=rep.accuracy, n=rep.n)

    def _cache_path(self, system_prompt: str, texts: list[str]) -> Path | None:
        if self.cache_dir is None:
            return None
        import llama_cpp

        key = msgspec.json.encode({
            "model_sha256": self.resolved.sha256, "system_prompt": system_prompt,
            "calibration": self.calibration, "max_input_tokens": self.options.max_input_tokens,
            "llama_cpp": llama_cpp.__version__, "texts": texts,
        })  # fmt: skip
        return self.cache_dir / f"{hashlib.sha256(key).hexdigest()}.json"

    @staticmethod
    def _cached(path: Path | None, n: int, labels: list[str]) -> list[str] | None:
        if path is None:
            return None
        try:
            preds = msgspec.json.decode(path.read_bytes(), type=list[str])
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            return None  # absent or damaged: classify again
        return preds if len(preds) == n and set(preds) <= set(labels) else None

    def close(self) -> None:
        """Free the student model."""
        self.model.close()

    def __enter__(self) -> StudentRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
