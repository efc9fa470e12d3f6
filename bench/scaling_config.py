"""What one `pld bench scaling` run measures: ``ScalingConfig``, the sweeps, grids and sample
sizes, checked before anything is loaded, and the command line that reproduces it.

Knows the option names of `pld bench scaling`; nothing of measuring.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pld.errors import ConfigError

__all__ = ["MAX_INPUT_TOKENS", "SWEEPS", "ScalingConfig"]

SWEEPS = ("prompt", "input", "batch", "prime")
MAX_INPUT_TOKENS = 2000  # the classifier's default max_input_tokens (2,048) less the turn tokens


@dataclass(frozen=True, kw_only=True)
class ScalingConfig:
    """The grid and sample sizes of one run; ``quick()`` is the tiny grid the tests use."""

    bundle: str | None = None  # None: Contract-NLI with ~4,600 tokens of rules
    data: str | None = None  # None: the shipped StereoSet dev inputs
    model: str | None = None  # None: the bundle's student
    sweeps: tuple[str, ...] = SWEEPS
    prompt_tokens: tuple[int, ...] = (0, 500, 1000, 2000, 4000, 6000, 8000)
    input_tokens: tuple[int, ...] = (16, 64, 256, 1024)
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    fixed_prompt_tokens: int | None = None  # None: the bundle's own system prompt
    requests: int = 8
    repeats: int = 2
    full_requests: int = 2
    batch_requests: int = 32
    threads: int = 0
    gpu_layers: int = 0

    @classmethod
    def quick(cls, **given: Any) -> ScalingConfig:
        """A grid that runs in seconds: two prompt lengths, two inputs, batches of 1 and 2."""
        small: dict[str, Any] = dict(
            prompt_tokens=(0, 300),
            input_tokens=(16, 64),
            batch_sizes=(1, 2),
            fixed_prompt_tokens=100,
            requests=2,
            repeats=1,
            full_requests=1,
            batch_requests=4,
        )
        return cls(**(small | given))

    def check(self) -> None:
        """Raise ``ConfigError`` for a grid that cannot run."""
        bad = [s for s in self.sweeps if s not in SWEEPS]
        if bad or not self.sweeps:
            raise ConfigError(f"unknown sweep(s) {bad}; choose from {', '.join(SWEEPS)}")
        if not self.prompt_tokens or min(self.prompt_tokens) < 0:
            raise ConfigError("--prompt-tokens needs lengths of 0 or more, e.g. 0,1000,4000")
        if not self.input_tokens or not 1 <= min(self.input_tokens) <= max(self.input_tokens):
            raise ConfigError("--input-tokens needs lengths of at least 1, e.g. 16,64,256")
        if max(self.input_tokens) > MAX_INPUT_TOKENS:
            raise ConfigError(f"--input-tokens allows at most {MAX_INPUT_TOKENS} tokens per input")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ConfigError("--batch-sizes needs sizes of at least 1, e.g. 1,2,4,8")
        for name in ("requests", "repeats", "full_requests", "batch_requests"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        if self.full_requests > self.requests:
            raise ConfigError(
                "--full-requests cannot exceed --requests (they time the same inputs)"
            )
        if "batch" in self.sweeps and self.batch_requests < max(self.batch_sizes):
            raise ConfigError(
                f"--batch-requests ({self.batch_requests}) must fill the largest batch; raise it "
                f"to at least {max(self.batch_sizes)}"
            )

    def command(self, out: Path) -> str:
        """The command line that reproduces this run: every setting the chosen sweeps use."""
        on = set(self.sweeps)
        used = {
            "bundle": True,
            "data": True,
            "model": True,
            "fixed_prompt_tokens": bool(on & {"input", "batch"}),
            "prompt_tokens": bool(on & {"prompt", "prime"}),
            "input_tokens": "input" in on,
            "batch_sizes": "batch" in on,
            "requests": bool(on & {"prompt", "input"}),
            "repeats": bool(on & {"prompt", "input", "batch"}),
            "full_requests": bool(on & {"prompt", "input"}),
            "batch_requests": "batch" in on,
            "threads": True,
            "gpu_layers": self.gpu_layers != 0,
        }
        args = ["pld", "bench", "scaling", "--out", str(out), "--sweeps", ",".join(self.sweeps)]
        for name, wanted in used.items():
            value = getattr(self, name)
            if wanted and value is not None:
                text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
                args += [f"--{name.replace('_', '-')}", text]
        return shlex.join(args)
