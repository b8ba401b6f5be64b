#!/usr/bin/env bash
# Stage what the GPU acceptance run (benchmarks/gpu_pubmedqa_finetune.sh) needs on the lent H200,
# which has no network and takes at most 64 MiB per call: three git-ignored folders, one per call.
#   .carry-a/  first half of the SmolLM2 GGUF + small wheels
#   .carry-b/  second half of the GGUF + the transformers wheel
#   .carry-c/  llama-cpp-python wheel (AVX2 build, no AMX), llama.cpp converter tree, PubMedQA release
# Wheels target the device image's Python 3.12. LLAMA_WHEEL points at a llama-cpp-python wheel built
# with MEDTUNE_LLAMA_CPU=avx2-style flags (portable to the device's CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${LLAMA_WHEEL:?set LLAMA_WHEEL=/path/to/llama_cpp_python-0.3.36-*.whl (AVX2 build)}"
PQ="${PQ:-../shared/data/pubmedqa}"
CACHE="${MEDTUNE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/medtune}"
gguf="$(python -c 'from medtune.embedded import smollm2_gguf_path; print(smollm2_gguf_path())')"
rm -rf .carry-a .carry-b .carry-c && mkdir -p .carry-a .carry-b .carry-c/llama.cpp .carry-c/pubmedqa
split -b 49500000 "$gguf" .carry-split.
mv .carry-split.aa .carry-a/smol.part && mv .carry-split.ab .carry-b/smol.part
dl() { python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$@"; }
dl .carry-a datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 gguf==0.19.0 peft==0.21.2 \
  pydantic==2.13.4 pydantic-core==2.46.4 annotated-types typing-inspection diskcache
dl .carry-b transformers==5.24.0
cp "$LLAMA_WHEEL" .carry-c/
cp -r "$CACHE/llama.cpp-0.3.36/." .carry-c/llama.cpp/
cp "$PQ/ori_pqal.json" "$PQ/test_ground_truth.json" .carry-c/pubmedqa/
du -sh .carry-a .carry-b .carry-c
