"""The bundles a server runs: one loaded model per student model, and per task the active
*generation* (a bundle file, its hash and a primed ``Classifier``).

Owns loading, priming beside the active one, the swap, and closing a retired classifier once its
last admitted input is answered. Where bundles come from is ``sources``'s; knows nothing of HTTP
or queues.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pld.errors import BundleError
from pld.runtime import (
    DEVICE_STATES_KEPT,
    Bundle,
    Classifier,
    ClassifierOptions,
    Model,
    parse_bundle,
)

from .sources import Source, Wanted

__all__ = ["Generation", "Registry", "ReloadResult"]

log = logging.getLogger("pld.serve")


@dataclass(eq=False)
class Generation:
    """One task's bundle as loaded: the file's sha256 and its primed classifier."""

    task: str
    bundle: Bundle
    path: Path
    sha256: str
    classifier: Classifier
    load_ms: float
    restored: bool
    pending: int = 0  # inputs admitted and not yet answered (guarded by Registry.lock)
    retired: bool = False
    closed: bool = False

    @property
    def version(self) -> str:
        return self.bundle.version

    def ref(self) -> dict[str, str]:
        """What every response names: the bundle that answered."""
        return {"name": self.bundle.name, "version": self.bundle.version, "sha256": self.sha256}

    def info(self) -> dict[str, object]:
        """A task's entry in /v1/tasks."""
        return {
            "task": self.task,
            **self.ref(),
            "rules": len(self.bundle.instructions),
            "labels": list(self.bundle.labels),
            "prefix_tokens": len(self.classifier.prefix_tokens),
            "load_ms": round(self.load_ms, 1),
            "restored": self.restored,
        }


@dataclass
class ReloadResult:
    """What one reload did, per task."""

    swapped: dict[str, tuple[str, str]] = field(default_factory=dict)  # task -> (old, new)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # task -> why
    unchanged: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


SwapHook = Callable[[str, "Generation | None", "Generation | None", str], None]


class Registry:
    """Task -> active generation, over models loaded once. Thread-safe: loads run on a loader
    thread, admissions on the event loop, releases on the worker."""

    def __init__(
        self, source: Source, options: ClassifierOptions, *, on_swap: SwapHook | None = None
    ) -> None:
        self.source = source
        self.options = options
        self.on_swap = on_swap
        self.lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self.active: dict[str, Generation] = {}
        self.models: dict[str, Model] = {}
        self.ready = False
        self.marker: str | None = None  # the source marker last loaded (or refused)
        self.loading = ""  # what the initial load is doing, for /readyz

    # -- loading -------------------------------------------------------------------------

    def _model(self, name: str) -> Model:
        if name not in self.models:
            t0 = time.perf_counter()
            self.models[name] = Model.open(name, n_gpu_layers=self.options.n_gpu_layers)
            log.info("model %s loaded in %.0f ms", name, (time.perf_counter() - t0) * 1000)
        return self.models[name]

    def _open(self, task: str, want: Wanted) -> Generation:
        data = want.path.read_bytes()
        sha256 = hashlib.sha256(data).hexdigest()
        if want.sha256 is not None and sha256 != want.sha256:
            raise BundleError(
                f"{want.path} has sha256 {sha256}, but the device's manifest says "
                f"{want.sha256}: the active file was changed after it was verified; refusing "
                "to serve it (run 'pld device pull' again, or 'pld device rollback')"
            )
        bundle = parse_bundle(data, source=str(want.path))
        model = self._model(want.model or bundle.student.model)
        t0 = time.perf_counter()  # the bundle's own cost: context, prime or restore
        opts = self.options
        if self.source.state_dir is not None:
            opts = dataclasses.replace(
                opts,
                state_dir=opts.state_dir or self.source.state_dir,
                states_kept=max(opts.states_kept, DEVICE_STATES_KEPT),
            )
        opts = dataclasses.replace(
            opts, allow_model_mismatch=opts.allow_model_mismatch or want.allow_model_mismatch
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            clf = Classifier(bundle, model, opts)
        for w in caught:
            log.warning("%s: %s", task, w.message)
        ms = (time.perf_counter() - t0) * 1000
        gen = Generation(
            task=task,
            bundle=bundle,
            path=want.path,
            sha256=sha256,
            classifier=clf,
            load_ms=ms,
            restored=clf.restore_ms is not None,
        )
        how = "restored" if gen.restored else "primed"
        log.info(
            "%s: %s %s %s (%d prompt tokens) in %.0f ms",
            task, bundle.name, bundle.version, how, len(clf.prefix_tokens), ms,
        )  # fmt: skip
        return gen

    def load(self, progress: Callable[[int, int], None] | None = None) -> None:
        """The first load: every task must load and prime, or this raises (nothing serves)."""
        with self._reload_lock:
            marker = self.source.marker()
            wanted = self.source.wanted()
            loaded: dict[str, Generation] = {}
            try:
                for i, (task, want) in enumerate(wanted.items()):
                    self.loading = f"priming {task} ({i + 1} of {len(wanted)})"
                    loaded[task] = self._open(task, want)
                    if progress is not None:
                        progress(i + 1, len(wanted))
            except BaseException:
                for gen in loaded.values():
                    gen.classifier.close()
                raise
            with self.lock:
                self.active = loaded
                self.marker = marker
                self.ready = True
                self.loading = ""
            for task, gen in loaded.items():
                if self.on_swap is not None:
                    self.on_swap(task, None, gen, "loaded")

    def reload(self) -> ReloadResult:
        """Re-read the source; prime each changed task's new bundle beside the active one and
        swap it in. A bundle that fails to load or prime is refused; the old one keeps serving.
        """
        with self._reload_lock:
            result = ReloadResult()
            marker = self.source.marker()
            try:
                wanted = self.source.wanted()
            except BundleError as exc:
                log.error("reload refused: %s", exc)
                result.refused["*"] = str(exc)
                self.marker = marker
                return result
            for task, want in wanted.items():
                old = self.active.get(task)
                try:
                    if old is not None and _same_file(old, want.path):
                        result.unchanged.append(task)
                        continue
                    gen = self._open(task, want)
                except Exception as exc:  # refused: the old generation keeps serving
                    why = f"{type(exc).__name__}: {exc}"
                    log.error("%s: new bundle %s refused, keeping %s: %s", task,
                              _describe(want.path), old.version if old else "nothing", why)  # fmt: skip
                    result.refused[task] = why
                    if self.on_swap is not None:
                        self.on_swap(task, old, None, "failed")
                    continue
                if old is not None and gen.sha256 == old.sha256:
                    gen.classifier.close()  # same bytes under another path (a rollback's link)
                    result.unchanged.append(task)
                    continue
                self._switch(task, gen)
                if old is None:
                    result.added.append(task)
                else:
                    result.swapped[task] = (old.version, gen.version)
            for task in [t for t in self.active if t not in wanted]:
                self._switch(task, None)
                result.removed.append(task)
            self.marker = marker
            return result

    def _switch(self, task: str, new: Generation | None) -> None:
        with self.lock:
            old = self.active.pop(task, None)
            if new is not None:
                self.active[task] = new
            close_now = old is not None and self._retire(old)
        if old is not None:
            log.info(
                "%s: %s -> %s (%d inputs still on the old one)",
                task, old.version, new.version if new else "removed", old.pending,
            )  # fmt: skip
        if close_now and old is not None:
            old.classifier.close()
        if self.on_swap is not None:
            self.on_swap(task, old, new, "ok")

    def _retire(self, gen: Generation) -> bool:
        """Mark ``gen`` retired (lock held); True if nothing references it any more."""
        gen.retired = True
        if gen.pending == 0 and not gen.closed:
            gen.closed = True
            return True
        return False

    # -- admission -----------------------------------------------------------------------

    def tasks(self) -> list[Generation]:
        with self.lock:
            return [self.active[t] for t in sorted(self.active)]

    def acquire(self, task: str | None, n: int) -> Generation | None:
        """The active generation of ``task`` (None: the only one), holding ``n`` inputs on it
        until ``release``; None if there is no such task (or several and none was named)."""
        with self.lock:
            if task is None:
                if len(self.active) != 1:
                    return None
                task = next(iter(self.active))
            gen = self.active.get(task)
            if gen is not None:
                gen.pending += n
            return gen

    def release(self, gen: Generation, n: int) -> bool:
        """``n`` inputs on ``gen`` are answered (or dropped); True: the caller must close its
        classifier now (it is retired and nothing references it)."""
        with self.lock:
            gen.pending -= n
            if gen.retired and gen.pending == 0 and not gen.closed:
                gen.closed = True
                return True
            return False

    def close(self) -> None:
        """Close every classifier and model (call after the worker has stopped)."""
        with self.lock:
            gens, self.active = list(self.active.values()), {}
        for gen in gens:
            if not gen.closed:
                gen.closed = True
                gen.classifier.close()
        for model in self.models.values():
            model.close()
        self.models.clear()


def _same_file(gen: Generation, path: Path) -> bool:
    """Whether ``path`` holds the bytes ``gen`` was loaded from (cheap: hash only if needed)."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    return hashlib.sha256(data).hexdigest() == gen.sha256


def _describe(path: Path) -> str:
    """``name version (path)`` of a bundle file, or just the path when it does not parse."""
    try:
        b = parse_bundle(path.read_bytes(), source=str(path), verify_digest=False)
    except Exception:
        return str(path)
    return f"{b.name} {b.version} ({path})"
