#!/usr/bin/env bash
# The GPU benchmark run of issue 10, in one go on a machine with an NVIDIA GPU: build pld with a
# CUDA llama-cpp-python (and a CUDA llama-server), run `pld bench latency` and `pld bench
# compare` with every layer offloaded, and collect their JSON lines into one file.
#
#   bench/gpu.sh                      # on the CUDA machine, from a fresh clone
#   PLD_GPU_DRY_RUN=1 bench/gpu.sh    # anywhere: no build, the same pld commands on the CPU
#                                     # (--gpu-layers 0, tiny sizes); tests/test_tuning.py runs it
#
# Results go to $OUT (a device runner collects that folder) or else bench/results/gpu/:
# gpu-<UTC time>.jsonl (one JSON object per line: the machine, then each benchmark's line) and
# a .log with everything the commands printed. After the build (about 10 minutes the first
# time) the benchmarks are bounded by PLD_GPU_TIMEOUT seconds each (default 240), so the runs
# fit in 10 minutes. Environment: CUDA_ARCHS (e.g. 90 for H100/H200) shortens the CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

dry=${PLD_GPU_DRY_RUN:-0}
limit=${PLD_GPU_TIMEOUT:-240}
out_dir=${OUT:-bench/results/gpu}
mkdir -p "$out_dir"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
results="$out_dir/gpu-$stamp.jsonl"
log="$out_dir/gpu-$stamp.log"
PY=.venv/bin/python
PLD=.venv/bin/pld
say() { echo "gpu.sh: $*" >&2; }

if [ "$dry" = 1 ]; then
    say "dry run on the CPU: no build, --gpu-layers 0, tiny sizes"
    [ -x "$PLD" ] || { say "no .venv/bin/pld; run ./install.sh first"; exit 1; }
    layers=0
    latency_args=(--bundle stereoset --requests 2 --repeats 1 --full-requests 1 --batch-size 2)
    compare_args=()
    machine='{"machine":"dry-run","gpu":null}'
else
    command -v nvidia-smi >/dev/null || { say "nvidia-smi not found: this is not a CUDA machine"; exit 1; }
    nvidia-smi | tee -a "$log" >&2
    gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -n 1)
    cuda_args="-DGGML_CUDA=on${CUDA_ARCHS:+ -DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCHS}"
    say "building pld with a CUDA llama-cpp-python ($cuda_args)"
    CMAKE_ARGS="$cuda_args" ./install.sh 2>&1 | tee -a "$log" >&2
    # install.sh keeps a llama-cpp-python that is already in .venv: rebuild it if it is CPU-only
    if ! "$PY" -c 'import llama_cpp.llama_cpp as L, sys; sys.exit(not L.llama_supports_gpu_offload())'; then
        version=$("$PY" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')
        say "rebuilding llama-cpp-python $version with CUDA"
        CMAKE_ARGS="$cuda_args" "$PY" -m pip install -q --force-reinstall --no-deps --no-cache-dir \
            --no-binary llama-cpp-python "llama-cpp-python==$version" 2>&1 | tee -a "$log" >&2
    fi
    backend=$("$PY" -c 'from pld.runtime.engine import gpu_backend; print(gpu_backend())')
    [ "$backend" = cuda ] || { say "llama.cpp reports GPU backend '$backend', not cuda"; exit 1; }
    say "building llama-server with CUDA (for pld bench compare)"
    server=$(GGML_CUDA=ON scripts/build_llama_server.sh 2>>"$log")
    export PLD_LLAMA_SERVER="$server"
    layers=-1
    latency_args=(--batch-size 8)
    compare_args=()
    machine=$("$PY" -c 'import json, sys; print(json.dumps({"machine": "cuda", "gpu": sys.argv[1]}))' "$gpu")
fi
echo "$machine" >>"$results"

# run NAME CMD...: the command's last stdout line (its JSON) goes to the results file
run() {
    local name=$1 tmp
    shift
    tmp=$(mktemp)
    say "$name: $*"
    if ! timeout "$limit" "$@" >"$tmp" 2>>"$log"; then
        cat "$tmp" >>"$log"
        rm -f "$tmp"
        say "$name failed or ran past ${limit}s; see $log"
        return 1
    fi
    cat "$tmp" >>"$log"
    tail -n 1 "$tmp" >>"$results"
    rm -f "$tmp"
}

status=0
run latency "$PLD" bench latency --gpu-layers "$layers" "${latency_args[@]}" || status=1
# help text wide enough that rich does not cut option names short
compare_has() { COLUMNS=200 "$PLD" bench compare --help 2>/dev/null | grep -q -- "$1 "; }
if COLUMNS=200 "$PLD" bench --help 2>/dev/null | grep -q ' compare '; then
    if [ "$dry" = 1 ]; then  # the sizes compare offers, smallest
        for opt in "--bundle stereoset" "--requests 2" "--repeats 1" "--full-requests 1" "--slow-requests 1"; do
            read -r flag value <<<"$opt"
            if compare_has "$flag"; then compare_args+=("$flag" "$value"); fi
        done
    fi
    if [ -n "${PLD_LLAMA_SERVER:-}" ] && compare_has --server-bin; then
        compare_args+=(--server-bin "$PLD_LLAMA_SERVER")
    fi
    run compare "$PLD" bench compare --gpu-layers "$layers" "${compare_args[@]}" \
        --json-out "$out_dir/compare-$stamp.json" || status=1
else
    say "this checkout has no 'pld bench compare'; skipped"
fi
say "results: $results (log: $log)"
cat "$results"
exit "$status"
