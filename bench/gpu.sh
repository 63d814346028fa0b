#!/usr/bin/env bash
# GPU check for a machine with an NVIDIA GPU and the CUDA toolkit (cannot run on the 2-core
# development machine). Builds spec with llama.cpp's CUDA backend (its own build cache entry),
# runs the test suite's fast checks, then bench/gpu_check.py: greedy losslessness of every drafter
# with all layers offloaded, plain vs each drafter's speedup, and the verify cost by rows. Prints
# one summary table; exits non-zero on any failure. Budget: ~10 min on one GPU with a warm pip
# cache (the CUDA build of llama.cpp dominates; later runs reuse it).
#
# Usage: bench/gpu.sh [extra CMake args, e.g. -DCMAKE_CUDA_ARCHITECTURES=89]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvcc >/dev/null || { echo "gpu.sh: nvcc not found (install the CUDA toolkit)" >&2; exit 1; }
export CMAKE_ARGS="-DGGML_CUDA=on ${*:-}"
export SPEC_BUILD_JOBS="${SPEC_BUILD_JOBS:-$(nproc)}"

start=$SECONDS
pip install -q -e ".[test,bench,models]"
echo "gpu.sh: build took $((SECONDS - start)) s"
python -m spec info | tee /dev/stderr | grep -q "^backends:.*CUDA" \
    || { echo "gpu.sh: the build has no CUDA backend" >&2; exit 1; }

# The engine, drafters, verification and sessions on the GPU build (tiny models, CPU contexts):
python -m pytest -q -x -m "not ray and not soak" tests/test_engine.py tests/test_verify.py \
    tests/test_sessions.py tests/test_chain.py tests/test_build.py

# Everything offloaded: losslessness, speedups, verify cost by rows.
python bench/gpu_check.py --n-gpu-layers -1 --prompts 4 --max-tokens 128
