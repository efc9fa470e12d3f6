"""The public face of the runtime: a bundle plus a model, classifying text into the bundle's labels.

Owns the prompt split into prefix and suffix, label scoring and contextual calibration, and the
prefix-state cache. Input refusals are ``checks``, the result records ``prediction``. The heavy
lifting is ``engine.Engine``; the weights are a ``model.Model`` that several classifiers may
share; which file a model name means is ``pld.models``.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

import pld.models as models
from pld.errors import BundleError, ContextOverflowError, InputError, ModelMismatchError
from pld.paths import prefix_states_dir

from .batch import label_room
from .bundle import Bundle, load_bundle
from .calibration import apply_prior, calibration_applies
from .checks import check_text, mismatch_message
from .devices import gpu_backend
from .engine import Engine
from .model import Model
from .options import DEVICE_STATES_KEPT, ClassifierOptions
from .prediction import Prediction, Timings
from .prefix_cache import PrefixStateStore, state_key
from .store import device_bundle_path, device_run_settings, resolve_bundle_path
from .template import CHAT_FORMATS, ChatFormat, Segment

__all__ = ["Classifier"]


class Classifier:
    """Classify text with a bundle's system prompt, evaluated once and reused for every request.

    ``Classifier.open`` loads the bundle's student (or ``model``) and owns it; to run several
    bundles on one set of weights, open a ``Model`` once and pass it to each classifier.
    """

    def __init__(
        self,
        bundle: Bundle,
        model: Model,
        options: ClassifierOptions | None = None,
        *,
        system_prompt: str | None = None,
        owns_model: bool = False,
    ) -> None:
        opts = options or ClassifierOptions()
        if (msg := mismatch_message(bundle, model.resolved)) is not None:
            if bundle.student.on_mismatch == "error" and not opts.allow_model_mismatch:
                raise ModelMismatchError(msg)
            warnings.warn(msg, stacklevel=2)
        self.bundle = bundle
        self.labels = bundle.labels
        self.model = model
        self.resolved = model.resolved
        self.options = opts
        self.owns_model = owns_model
        self.truncate = opts.truncate
        self.format: ChatFormat = CHAT_FORMATS[model.resolved.chat_format]
        system = bundle.system_prompt if system_prompt is None else system_prompt
        self.prefix_tokens = self._tokens(self.format.prefix(system), bos=True)
        self.label_tokens = [model.tokenize(name, special=False) for name in self.labels]
        self._tail = self._tokens([(self.format.turn_end, True)], bos=False)
        lanes = 1 if label_room(self.label_tokens) == 0 else len(self.labels)
        config = dataclasses.replace(opts.engine_config(), n_gpu_layers=model.n_gpu_layers)
        self.engine = Engine(model, config, prefix_len=len(self.prefix_tokens), lanes=lanes)
        # a fitted calibration's prior (runtime.prior) belongs to the bundle's own prompt: with
        # another system prompt the classifier runs uncalibrated unless --calibrate forces the
        # content-free prior
        prior = bundle.runtime.prior if system_prompt is None else None
        self._fitted = None if prior is None else np.asarray(prior, dtype=np.float64)
        applies, note = calibration_applies(bundle, model.resolved)
        if applies and bundle.runtime.prior is not None and self._fitted is None:
            applies = False
            note = (
                f"calibration: none (bundle '{bundle.name}' has a prior fitted for its own "
                "prompt, not this one; force the content-free one with --calibrate)"
            )
        self.calibrated = applies if opts.calibrate is None else opts.calibrate
        # why the bundle's recorded calibration is not used with this model, if it is not
        self.calibration_note = note if opts.calibrate is None else None
        self._cf: npt.NDArray[np.float64] | None = None  # the prior divided out, if calibrated
        self.prime_ms: float | None = None
        self.restore_ms: float | None = None
        self._prepare(opts.prefix_cache, opts.state_dir, opts.states_kept)

    # -- construction --------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        bundle: str | Path | Bundle | None = None,
        options: ClassifierOptions | None = None,
        *,
        model: str | Model | None = None,
        system_prompt: str | None = None,
        device_dir: str | Path | None = None,
        **overrides: Any,
    ) -> Classifier:
        """Load a bundle (path or shipped name) and its student model, and prime the prefix.

        ``options`` (or keyword ``overrides`` of its fields, e.g. ``max_batch=8``) set how it
        runs. ``model`` overrides the bundle's student: a registry name, a .gguf path, or a
        loaded ``Model`` to share (the classifier then leaves it open on ``close``). A model
        file whose sha256 differs from the bundle's raises unless ``allow_model_mismatch``.
        ``system_prompt`` replaces the bundle's (benchmarks use "" for the floor).

        With ``device_dir`` (a directory `pld device pull` manages), ``bundle`` is a task name
        (None: the only task) and the classifier runs whatever is active there, on the model
        and mismatch policy the pull recorded, with prefix states in ``DEVICE_DIR/states``.
        """
        opts = dataclasses.replace(options or ClassifierOptions(), **overrides)
        if device_dir is not None:
            if bundle is not None and not isinstance(bundle, str):
                raise BundleError("with device_dir, pass a task name (or None), not a bundle")
            bundle = device_bundle_path(device_dir, bundle)
            recorded, allowed = device_run_settings(bundle)
            model = recorded if model is None else model
            opts = dataclasses.replace(
                opts,
                state_dir=opts.state_dir or Path(device_dir) / "states",
                states_kept=max(opts.states_kept, DEVICE_STATES_KEPT),
                allow_model_mismatch=opts.allow_model_mismatch or allowed,
            )
        elif bundle is None:
            raise BundleError("pass a bundle (a path or a shipped name), or a device_dir")
        if not isinstance(bundle, Bundle):
            bundle = load_bundle(resolve_bundle_path(bundle))
        if isinstance(model, Model):
            return cls(bundle, model, opts, system_prompt=system_prompt)
        resolved = models.resolve(model or bundle.student.model)
        msg = mismatch_message(bundle, resolved)
        if msg and bundle.student.on_mismatch == "error" and not opts.allow_model_mismatch:
            raise ModelMismatchError(msg)  # before spending seconds on loading the weights
        llm = Model(resolved, n_gpu_layers=opts.n_gpu_layers)
        try:
            return cls(bundle, llm, opts, system_prompt=system_prompt, owns_model=True)
        except BaseException:
            llm.close()
            raise

    def _tokens(self, segments: Sequence[Segment], *, bos: bool) -> list[int]:
        out = [self.model.bos] if bos and self.model.add_bos else []
        for text, special in segments:
            out += self.model.tokenize(text, special=special)
        return out

    def _state_key(self) -> str:
        import llama_cpp

        cfg = self.engine.config
        # Batch shapes change the primed cells' rounding and the window cache's size; they join
        # the key only when not the defaults, so existing state files keep their names.
        shapes = {"n_batch": cfg.n_batch, "n_ubatch": cfg.ubatch()}
        if (cfg.n_batch, cfg.ubatch()) == (512, 512):
            shapes = {}
        return state_key(
            model_sha256=self.resolved.sha256,
            prefix=state_key(tokens=self.prefix_tokens),
            llama_cpp=llama_cpp.__version__,
            n_ctx=self.engine.n_ctx,
            n_seq=self.engine.n_seq,
            flash_attn=cfg.flash_attn,
            swa_full=cfg.swa_full,
            kv_type=cfg.type_k if cfg.type_k == cfg.type_v else f"{cfg.type_k}/{cfg.type_v}",
            n_gpu_layers=cfg.n_gpu_layers,
            layout=Engine.LAYOUT,
            **shapes,
        )

    def _prepare(self, use_cache: bool, state_dir: Path | None, keep: int) -> None:
        where = Path(state_dir) if state_dir else prefix_states_dir()
        store = PrefixStateStore(where, keep=keep)
        key = self._state_key()
        cf_key = state_key(inputs=self.bundle.runtime.content_free_inputs, labels=self.label_tokens)
        if use_cache:
            t0 = time.perf_counter()
            hit = store.load(key)
            if hit and self.engine.restore(self.prefix_tokens, hit[1]):
                self.restore_ms = (time.perf_counter() - t0) * 1000
                cf = hit[0].get("calibration", {})
                if self.calibrated and self._fitted is None and cf.get("key") == cf_key:
                    self._cf = np.asarray(cf["probs"], dtype=np.float64)
                elif self.calibrated:
                    self._cf = self._prior()
                return
        self.prime_ms = self.engine.prime(self.prefix_tokens)
        if self.calibrated:
            self._cf = self._prior()
        if use_cache:
            header: dict[str, Any] = {
                "bundle": self.bundle.name,
                "bundle_digest": self.bundle.digest,
                "model": self.resolved.name,
                "prefix_tokens": len(self.prefix_tokens),
            }
            if self._cf is not None and self._fitted is None:
                header["calibration"] = {"key": cf_key, "probs": self._cf.tolist()}
            store.save(key, header, self.engine.prefix_state())

    def _prior(self) -> npt.NDArray[np.float64]:
        """The prior calibration divides out: the bundle's fitted one, else the content-free."""
        return self._fitted if self._fitted is not None else self._content_free()

    def content_free_prior(self) -> npt.NDArray[np.float64]:
        """The mean label distribution on the bundle's content-free inputs, in label order:
        the prior contextual calibration divides out (computed whether or not it is used)."""
        if self._cf is not None and self._fitted is None:
            return self._cf
        return self._content_free()

    def _content_free(self) -> npt.NDArray[np.float64]:
        """Mean label distribution on content-free inputs: the prior to divide out."""
        inputs = self.bundle.runtime.content_free_inputs
        sufs = [self._tokens(self.format.suffix(x), bos=False) for x in inputs]
        probs = self._normalize(self.engine.score(sufs, self.label_tokens))
        return probs.mean(axis=0)  # type: ignore[no-any-return]

    def reprime(self, system_prompt: str) -> int:
        """Switch to another system prompt, decoding only from where its tokens part from the
        current ones; returns the prompt tokens decoded.

        The result equals a classifier opened with ``system_prompt`` (a content-free prior is
        recomputed too), except that a bundle's fitted prior stays: the bundle's calibration
        with other rules, as the audit's leave-one-out variants need. Needs the full-size
        sliding-window cache (``max_batch`` > 1): on the windowed one the engine raises
        ``ConfigError``.
        """
        tokens = self._tokens(self.format.prefix(system_prompt), bos=True)
        n = self.engine.reprime(tokens)
        self.prefix_tokens = tokens
        if self.calibrated:
            self._cf = self._prior()
        return n

    # -- requests ------------------------------------------------------------------------

    @staticmethod
    def _normalize(logp: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        x = logp - logp.max(axis=-1, keepdims=True)
        p = np.exp(x)
        return p / p.sum(axis=-1, keepdims=True)  # type: ignore[no-any-return]

    def request_tokens(self, text: str | bytes) -> tuple[list[int], bool]:
        """The tokens one request decodes after the prefix, and whether its input was cut.

        Raises ``InputError`` for empty or non-UTF-8 text and ``ContextOverflowError`` for an
        input that does not fit (unless the classifier truncates).
        """
        body = self.model.tokenize(check_text(text), special=False)
        room = self.engine.capacity(len(self._tail), label_room(self.label_tokens))
        room = min(room, self.engine.config.max_input_tokens - len(self._tail))
        if len(body) > room:
            if not self.truncate:
                raise ContextOverflowError(
                    f"input has {len(body)} tokens but only {max(room, 0)} fit (context "
                    f"{self.engine.n_ctx} tokens, system prompt {len(self.prefix_tokens)}, "
                    f"max_input_tokens {self.engine.config.max_input_tokens}); shorten it, "
                    "raise n_ctx / max_input_tokens, or pass truncate=True (--truncate)"
                )
            return body[: max(room, 0)] + self._tail, True
        return body + self._tail, False

    def _predict(
        self, logp: npt.NDArray[np.float64], timings: Timings, id_: str | None, truncated: bool
    ) -> Prediction:
        p = self._normalize(logp)
        if self._cf is not None:
            p = apply_prior(p, self._cf)
        best = int(np.argmax(p))
        return Prediction(
            label=self.labels[best],
            probs={name: float(v) for name, v in zip(self.labels, p)},
            calibrated=self._cf is not None,
            timings=timings,
            id=id_,
            truncated=truncated,
        )

    def classify(self, text: str | bytes, *, id: str | None = None) -> Prediction:
        """Classify one input: evaluates only its own tokens plus one step per label."""
        return self.classify_many([text], ids=[id] if id is not None else None)[0]

    def classify_many(
        self, texts: Sequence[str | bytes], *, ids: Sequence[str] | None = None
    ) -> list[Prediction]:
        """Classify many inputs in batches over copies of the shared prefix."""
        if ids is not None and len(ids) != len(texts):
            raise InputError(f"got {len(texts)} texts but {len(ids)} ids")
        if not texts:
            return []
        t0 = time.perf_counter()
        prepared = [self.request_tokens(t) for t in texts]
        t1 = time.perf_counter()
        logp = self.engine.score([s for s, _ in prepared], self.label_tokens)
        t2 = time.perf_counter()
        n = len(texts)
        out = []
        for i, ((suf, cut), row) in enumerate(zip(prepared, logp)):
            timings = Timings(
                input_tokens=len(suf),
                tokenize_ms=(t1 - t0) * 1000 / n,
                decode_ms=(t2 - t1) * 1000 / n,
                total_ms=(time.perf_counter() - t0) * 1000 / n,
            )
            out.append(self._predict(row, timings, ids[i] if ids else None, cut))
        return out

    def classify_full(self, text: str | bytes) -> Prediction:
        """Reference path: evaluate system prompt and input from scratch (for tests, benchmarks).

        It discards the primed prefix; use it on a classifier opened for that purpose.
        """
        t0 = time.perf_counter()
        suf, cut = self.request_tokens(text)
        logp = self.engine.score_full(self.prefix_tokens, suf, self.label_tokens)
        ms = (time.perf_counter() - t0) * 1000
        return self._predict(
            logp,
            Timings(input_tokens=len(suf), tokenize_ms=0.0, decode_ms=ms, total_ms=ms),
            None,
            cut,
        )

    @property
    def backend(self) -> str:
        """Which backend runs the model's layers: 'cpu', or the GPU backend llama.cpp offloads
        them to ('cuda', 'metal', ...) when ``n_gpu_layers`` is not 0 and the build has one."""
        if self.engine.config.n_gpu_layers == 0:
            return "cpu"
        return gpu_backend() or "cpu"

    def close(self) -> None:
        """Free the context, and the model if this classifier loaded it."""
        self.engine.close()
        if self.owns_model:
            self.model.close()

    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
