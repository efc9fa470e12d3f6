#!/usr/bin/env bash
# Build llama.cpp's own HTTP server (llama-server) from the llama.cpp sources that the installed
# llama-cpp-python's source package ships, with the same AMX-free flags as install.sh, and cache
# the binary: ~/.cache/pld/llama-server/<llama-cpp-python version>/llama-server (PLD_CACHE_DIR
# moves it). Prints the binary's path. About ten minutes on 2 cores the first time, instant after.
#
#   scripts/build_llama_server.sh            # CPU build
#   GGML_CUDA=ON scripts/build_llama_server.sh   # CUDA build (bench/gpu.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
version=$("$PY" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')
cache=${PLD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pld}
flavour=cpu
[ "${GGML_CUDA:-OFF}" = "ON" ] && flavour=cuda
out="$cache/llama-server/$version-$flavour"
if [ -x "$out/llama-server" ]; then
    echo "$out/llama-server"
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "fetching the llama-cpp-python $version source package (llama.cpp sources inside)" >&2
"$PY" -m pip download -q --no-deps --no-binary :all: \
    "llama-cpp-python==$version" -d "$work" >&2
tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
src=$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)
flags="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
[ "$flavour" = cuda ] && flags="$flags -DGGML_CUDA=ON"
echo "building llama-server ($flavour; about ten minutes on 2 cores)" >&2
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=ON $flags >&2
cmake --build "$work/build" --target llama-server -j "$(nproc)" >&2
mkdir -p "$out"
cp "$work/build/bin/llama-server" "$out/llama-server.tmp"
mv "$out/llama-server.tmp" "$out/llama-server"
echo "$out/llama-server"
