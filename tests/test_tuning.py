"""llama.cpp's tuning knobs (KV cache type, ubatch, flash attention, threads) and the backend
report: bad settings fail early with the fix in the message, tuned contexts stay exact, and
bench/gpu.sh is runnable. The model tests use the real Gemma-3 270M; nothing is mocked except
where a test says so.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, records
from typer.testing import CliRunner

from pld.bench.inputs import default_bundle
from pld.cli import app
from pld.errors import ConfigError
from pld.runtime import Bundle, Classifier, ClassifierOptions, Student, load_bundle
from pld.runtime.context import KV_TYPES
from pld.runtime.devices import devices, gpu_backend
from pld.runtime.options import parse_kv_type, tuning_overrides

runner = CliRunner()


def test_bad_knobs_fail_when_the_options_are_made() -> None:
    with pytest.raises(ConfigError, match="unknown KV cache type 'q9_9'.*q8_0"):
        ClassifierOptions(type_k="q9_9")
    with pytest.raises(ConfigError, match="quantized V cache .*needs flash attention"):
        ClassifierOptions(type_k="q8_0", type_v="q8_0")
    with pytest.raises(ConfigError, match="n_ubatch \\(1024\\) must be between 1 and n_batch"):
        ClassifierOptions(n_ubatch=1024)
    with pytest.raises(ConfigError, match="n_threads_batch is -1"):
        ClassifierOptions(n_threads_batch=-1)
    # a quantized K is fine without flash attention; a quantized V is, once it may be turned on
    ClassifierOptions(type_k="q8_0")
    ClassifierOptions(type_v="q4_0", flash_attn=None)
    ClassifierOptions(type_v="q4_0", flash_attn=True)


def test_cli_words_become_options() -> None:
    assert parse_kv_type("q8_0") == ("q8_0", "q8_0")
    assert parse_kv_type("Q8_0/f16") == ("q8_0", "f16")
    for bad in ("", "q8", "q8_0/f16/f16", "f16/"):
        with pytest.raises(ConfigError, match="--kv-type"):
            parse_kv_type(bad)
    assert set(KV_TYPES) >= {"f16", "q8_0", "q4_0"}
    assert tuning_overrides() == {}
    assert tuning_overrides("q4_0/f16", 64, "auto") == {
        "type_k": "q4_0",
        "type_v": "f16",
        "n_ubatch": 64,
        "flash_attn": None,
    }
    assert tuning_overrides(flash_attn="on") == {"flash_attn": True}
    with pytest.raises(ConfigError, match="--ubatch -1"):
        tuning_overrides(ubatch=-1)


def test_cli_refuses_bad_knobs_before_loading_anything() -> None:
    out = runner.invoke(app, ["classify", "--bundle", "stereoset", "--kv-type", "q9", "x"])
    assert isinstance(out.exception, ConfigError) and "--kv-type 'q9'" in str(out.exception)
    out = runner.invoke(app, ["bench", "latency", "--kv-type", "q8_0", "--flash-attn", "off"])
    assert isinstance(out.exception, ConfigError) and "--flash-attn on" in str(out.exception)
    out = runner.invoke(app, ["classify", "--flash-attn", "maybe", "x"])
    assert out.exit_code == 2 and "maybe" in out.output


def test_backend_names_the_gpu_backend_llama_cpp_offloads_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import llama_cpp.llama_cpp as L

    found = devices()
    assert any(reg == "CPU" and kind == 0 for reg, _, kind in found), found
    # this build's answer agrees with llama.cpp's own "can offload" flag
    assert (gpu_backend() is not None) == bool(L.llama_supports_gpu_offload())
    # The registry of a CUDA or Metal build cannot be produced on this CPU-only machine, so
    # these two fake it, to check the names the JSON's "backend" field would carry there.
    import pld.runtime.devices as registry

    monkeypatch.setattr(registry, "devices", lambda: [("CPU", "CPU", 0), ("CUDA", "CUDA0", 1)])
    assert registry.gpu_backend() == "cuda"
    monkeypatch.setattr(registry, "devices", lambda: [("MTL", "MTL0", 2), ("CPU", "CPU", 0)])
    assert registry.gpu_backend() == "metal"
    monkeypatch.setattr(registry, "devices", lambda: [("BLAS", "BLAS", 3), ("CPU", "CPU", 0)])
    assert registry.gpu_backend() is None


def _window_bundle(n_rules: int) -> Bundle:
    long = load_bundle(default_bundle())
    return Bundle.create(
        name="tuning",
        task=long.task,
        instructions=long.instructions[:n_rules],
        student=Student(model="gemma-3-270m"),
    )


def _shortest(k: int) -> list[str]:
    return [r["text"] for r in sorted(records("stereoset", n=k), key=lambda r: len(r["text"]))]


# Each tuned context must stay exact: prefix reuse (repeated, so later requests see earlier
# ones' traces) equals evaluating the whole prompt from scratch with the same settings.
# n_ubatch 16 makes every ~28-token input span several compute steps on the windowed cache,
# the case where the engine must put the prefix's last window back. Each prompt is just long
# enough (rules of the benchmark bundle) to outgrow its windowed cache.
TUNED: dict[str, tuple[int, dict[str, object]]] = {
    "ubatch16": (24, {"n_ubatch": 16}),
    "k-q8_0": (30, {"type_k": "q8_0"}),
}


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.timeout(900)  # the reference path re-reads the ~1,000-token prompt per input
@pytest.mark.parametrize(("n_rules", "knobs"), list(TUNED.values()), ids=list(TUNED))
def test_tuned_contexts_stay_exact(n_rules: int, knobs: dict[str, object]) -> None:
    b = _window_bundle(n_rules)
    texts = _shortest(2)
    kw: dict[str, object] = dict(calibrate=False, prefix_cache=False, n_threads=2, **knobs)
    reuse = Classifier.open(b, **kw)
    full = Classifier.open(b, **kw)
    try:
        assert reuse.engine.windowed and reuse.backend == "cpu"
        # the prompt outgrows the windowed cache (n_swa + ubatch, rounded up to 256 cells)
        cells = -(-(reuse.model.n_swa + reuse.engine.config.ubatch()) // 256) * 256
        assert len(reuse.prefix_tokens) > cells
        assert min(len(reuse.request_tokens(t)[0]) for t in texts) > 16
        got = [reuse.classify(t).probs for t in texts * 2]
        want = [full.classify_full(t).probs for t in texts]
        assert got == want * 2
    finally:
        reuse.close()
        full.close()


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.timeout(900)  # four classifiers; seconds on an idle machine, minutes on a busy one
def test_tuned_state_files_are_kept_apart_and_restore_exactly(tmp_path: Path) -> None:
    texts = _shortest(2)
    opened = []
    try:
        for knobs in ({}, {"n_ubatch": 64}, {"type_k": "q8_0"}, {"n_ubatch": 64}):
            c = Classifier.open("stereoset", calibrate=False, state_dir=tmp_path, **knobs)
            opened.append(c)
        default, ub, kq8, ub_again = opened
        assert len({default._state_key(), ub._state_key(), kq8._state_key()}) == 3
        assert ub_again.restore_ms is not None and ub._state_key() == ub_again._state_key()
        assert [ub.classify(t).probs for t in texts] == [ub_again.classify(t).probs for t in texts]
    finally:
        for c in opened:
            c.close()


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_gpu_script_parses_and_its_cpu_dry_run_collects_json(tmp_path: Path) -> None:
    script = REPO / "bench" / "gpu.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    env = {**os.environ, "PLD_GPU_DRY_RUN": "1", "OUT": str(tmp_path)}
    run = subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, timeout=600, cwd=REPO
    )
    assert run.returncode == 0, run.stderr[-2000:]
    (results,) = tmp_path.glob("gpu-*.jsonl")
    lines = [json.loads(x) for x in results.read_text().splitlines()]
    assert lines[0] == {"machine": "dry-run", "gpu": None}
    latency = lines[1]
    assert latency["backend"] == "cpu" and latency["requests"] == 2
    assert latency["kv_type"] and latency["n_ubatch"] >= 1
