"""Shared fixtures of the micro-benchmarks: the real model, the benchmark bundle and real inputs,
opened once per session, with prefix states in a temporary directory.

Two environment variables, read only by this suite, change the workload without touching product
code (to show that ``--benchmark-compare-fail`` catches a slowdown, bench/micro/README.md):
``PLD_MICRO_OPTIONS``, a JSON object of ``ClassifierOptions`` fields (e.g. ``{"n_threads": 1}``)
for every classifier; ``PLD_MICRO_BUNDLE``, the bundle (name or path) the classifiers run.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pld.bench.inputs import default_bundle, default_inputs
from pld.errors import ConfigError
from pld.runtime import (
    Bundle,
    Classifier,
    ClassifierOptions,
    Model,
    load_bundle,
    read_records,
    resolve_bundle_path,
)

BATCH = 16  # requests per classify_many in the batched benchmark


def micro_options() -> ClassifierOptions:
    """Default ``ClassifierOptions``, with the fields ``PLD_MICRO_OPTIONS`` sets."""
    raw = os.environ.get("PLD_MICRO_OPTIONS", "").strip()
    if not raw:
        return ClassifierOptions()
    names = {f.name for f in dataclasses.fields(ClassifierOptions)}
    try:
        fields: Any = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(
            f"PLD_MICRO_OPTIONS is not JSON ({exc}); pass an object such as '{{\"n_threads\": 1}}'"
        ) from None
    if not isinstance(fields, dict) or not set(fields) <= names:
        raise ConfigError(
            f"PLD_MICRO_OPTIONS must be a JSON object of ClassifierOptions fields "
            f"({', '.join(sorted(names))}), not {raw!r}"
        )
    return dataclasses.replace(ClassifierOptions(), **fields)


@pytest.fixture(scope="session")
def options() -> ClassifierOptions:
    """How every classifier of the session runs (state_dir and max_batch are set per fixture)."""
    return micro_options()


@pytest.fixture(scope="session")
def bundle() -> Bundle:
    """The benchmark bundle (Contract-NLI, 4,664 prefix tokens), or ``PLD_MICRO_BUNDLE``."""
    return load_bundle(resolve_bundle_path(os.environ.get("PLD_MICRO_BUNDLE") or default_bundle()))


@pytest.fixture(scope="session")
def texts() -> list[str]:
    """The first ``BATCH`` StereoSet dev inputs shipped with pld."""
    return [r.text for r in read_records(default_inputs(), limit=BATCH)]


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prefix-state files of this session (never pld's own cache)."""
    return tmp_path_factory.mktemp("prefix-states")


@pytest.fixture(scope="session")
def model(bundle: Bundle, options: ClassifierOptions) -> Iterator[Model]:
    """The bundle's student, loaded once and shared by every classifier."""
    llm = Model.open(bundle.student.model, n_gpu_layers=options.n_gpu_layers)
    yield llm
    llm.close()


@pytest.fixture(scope="session")
def single(
    bundle: Bundle, model: Model, options: ClassifierOptions, state_dir: Path
) -> Iterator[Classifier]:
    """One request at a time (``max_batch`` 1, the windowed cache); primes and saves its state."""
    clf = Classifier(bundle, model, dataclasses.replace(options, state_dir=state_dir))
    assert clf.prime_ms is not None, "the first classifier of a session must prime its prefix"
    yield clf
    clf.close()


@pytest.fixture(scope="session")
def batched(
    bundle: Bundle, model: Model, options: ClassifierOptions, state_dir: Path
) -> Iterator[Classifier]:
    """Batches of ``BATCH`` requests over copies of the prefix (the full-size cache)."""
    opts = dataclasses.replace(options, state_dir=state_dir, max_batch=BATCH)
    clf = Classifier(bundle, model, opts)
    yield clf
    clf.close()


def pytest_benchmark_update_json(config: pytest.Config, benchmarks: Any, output_json: Any) -> None:
    """Record the workload settings of the run in the saved JSON, next to machine_info."""
    output_json["pld_micro_options"] = os.environ.get("PLD_MICRO_OPTIONS", "") or "defaults"
    output_json["pld_micro_bundle"] = os.environ.get("PLD_MICRO_BUNDLE", "") or "default"
