#!/usr/bin/env bash
# Stage what the GPU runs of the PubMedQA fine-tunes (benchmarks/gpu_pubmedqa_reasoning.sh,
# benchmarks/gpu_pubmedqa_finetune.sh) need on the lent H200, which has no network and takes at most
# 64 MiB per call: four git-ignored folders, one per call, copied by each call to $CARRY/{a,b,c,d}.
#   .carry-a/  first third of the SmolLM2 GGUF, small wheels, the PubMedQA release (pubmedqa/)
#   .carry-b/  second third of the GGUF + the transformers wheel
#   .carry-c/  the rest of the GGUF
#   .carry-d/  llama-cpp-python wheel (portable AVX2 build, no AMX) + the llama.cpp converter tree
# SPLIT=2 cuts the GGUF in halves instead (a and b only, ~62 MiB each with the repository): one call
# fewer, for runs that need no llama.cpp on the GPU machine (gpu_pubmedqa_reasoning.sh GGUF=0).
# Wheels target the device image's Python 3.12. LLAMA_WHEEL points at a llama-cpp-python wheel built with
#   MEDTUNE_LLAMA_CPU=avx2 PYTHON=<a throwaway venv's python> bash scripts/setup-llama-cpp.sh
# (its library is plain ctypes, so a wheel built by any Python 3 runs on the device's 3.12).
#   bash scripts/stage_gpu_carry.sh [PART...]    # parts a b c d (default: all four)
set -euo pipefail
cd "$(dirname "$0")/.."
parts=("${@:-a}"); [ $# -eq 0 ] && parts=(a b c d)
PQ="${PQ:-../shared/data/pubmedqa}"
CACHE="${MEDTUNE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/medtune}"
gguf="$(python -c 'from medtune.embedded import smollm2_gguf_path; print(smollm2_gguf_path())')"
dl() { python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$@"; }
for part in "${parts[@]}"; do
  rm -rf ".carry-$part" && mkdir -p ".carry-$part"
  case "$part" in
    a|b|c)
      # The GGUF in SPLIT (3) equal parts (split -n N -d names them 00, 01, ...).
      split -n "${SPLIT:-3}" -d "$gguf" .carry-split.
      n=$(printf '%s' "$part" | tr abc 012)
      [ -e ".carry-split.0$n" ] || { echo "part $part: SPLIT=${SPLIT:-3} makes no such part" >&2; exit 2; }
      mv ".carry-split.0$n" ".carry-$part/smol.part" && rm -f .carry-split.*;;&
    a)
      # The versions this repository's CPU side runs with (pip list in .venv).
      dl .carry-a datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 gguf==0.19.0 peft==0.21.2 \
        pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 diskcache==5.6.3
      mkdir -p .carry-a/pubmedqa && cp "$PQ/ori_pqal.json" "$PQ/test_ground_truth.json" .carry-a/pubmedqa/;;
    b) dl .carry-b transformers==5.24.0;;
    c) ;;
    d)
      : "${LLAMA_WHEEL:?set LLAMA_WHEEL=/path/to/llama_cpp_python-0.3.36-*.whl (AVX2 build)}"
      mkdir -p .carry-d/llama.cpp && cp "$LLAMA_WHEEL" .carry-d/ && cp -r "$CACHE/llama.cpp-0.3.36/." .carry-d/llama.cpp/;;
    *) echo "unknown part $part (a, b, c or d)" >&2; exit 2;;
  esac
  du -sh ".carry-$part"
done
