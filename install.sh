#!/usr/bin/env bash
# Install pld into ./.venv (created if missing), with optional extras: ./install.sh [test|dev|hub|distill ...]
#
# llama-cpp-python builds from source. Its default native build (-march=native) emits AMX
# instructions that some virtual CPUs advertise but do not allow (SIGILL at the first matmul),
# so unless CMAKE_ARGS is already set we build for a portable AVX2 set instead.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON}"
extras=$(IFS=,; echo "$*")
target="."
[ -n "$extras" ] && target=".[$extras]"
echo "installing pld$([ -n "$extras" ] && echo "[$extras]") into .venv (llama-cpp-python CMAKE_ARGS: $CMAKE_ARGS)" >&2
echo "a first install compiles llama-cpp-python: about 6 minutes on 2 cores" >&2
# setuptools notes on every editable install with a package-dir mapping that a folder named
# like the package (our pld/, which is that package) could shadow it: true, intended, and
# nothing for a newcomer to act on, so that one informational warning is filtered out.
PYTHONWARNINGS="ignore::Warning:setuptools.command.editable_wheel" \
    .venv/bin/python -m pip install -q -e "$target"
