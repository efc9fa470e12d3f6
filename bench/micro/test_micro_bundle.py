"""Micro-benchmarks of loading a bundle: read, decode, validate, check the digest; for every
shipped bundle and the benchmark bundle. No model is loaded.
"""

from __future__ import annotations

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from pld.bench.inputs import default_bundle
from pld.runtime import load_bundle, resolve_bundle_path, shipped_bundles

# the shipped bundles (about 2 kB each) and the benchmark bundle (about 60 kB, 4,664 tokens)
BUNDLES = {name: str(path) for name, path in shipped_bundles().items()}
BUNDLES["contractnli-long"] = default_bundle()


@pytest.mark.benchmark(group="bundle")
@pytest.mark.parametrize("name", sorted(BUNDLES))
def test_load_bundle(benchmark: BenchmarkFixture, name: str) -> None:
    """Read, decode, validate and digest-check one bundle file."""
    path = resolve_bundle_path(BUNDLES[name])
    bundle = benchmark(load_bundle, path)
    assert bundle.digest is not None
    benchmark.extra_info["bytes"] = path.stat().st_size
