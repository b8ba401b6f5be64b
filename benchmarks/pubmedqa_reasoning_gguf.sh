#!/usr/bin/env bash
# The GGUF half of the PubMedQA reasoning fine-tune, on this machine (CPU), for a GPU run made without
# llama.cpp (`GGUF=0 bash benchmarks/gpu_pubmedqa_reasoning.sh final`): the adapter that came back is
# merged here, exported to F16 + Q8_0 by llama.cpp, and merged (fp32) and Q8_0 are scored on the 500
# PubMedQA test items, loglik (and cot with MODES="loglik cot"), so the quantized file is held against
# the model it was made from on the same machine.
#   bash benchmarks/pubmedqa_reasoning_gguf.sh DEVICE_OUT [RESULTS_JSON]
# DEVICE_OUT holds what the final step returned: adapter*.part.* and run.tar.gz. RESULTS_JSON (default
# benchmarks/results/pubmedqa_reasoning.json, as the final step wrote it) gets the rows added under
# "gguf_check". The GPU's own eval folder is kept as eval-gpu/ in the rebuilt run folder.
set -euo pipefail
cd "$(dirname "$0")/.."
FROM="${1:?usage: pubmedqa_reasoning_gguf.sh DEVICE_OUT [RESULTS_JSON]}"
RESULTS="${2:-benchmarks/results/pubmedqa_reasoning.json}"
PQ="$(cd "${PQ:-../shared/data/pubmedqa}" && pwd)"
RUNS="${RUNS:-runs/pubmedqa-gguf}"
MODES="${MODES:-loglik}"
PY="${PYTHON:-python}"
cfg=configs/pubmedqa-reasoning-smollm2.yaml
run="$RUNS/pubmedqa-reasoning-smollm2"
modes="[$(echo "$MODES" | sed 's/ /, /g')]"
cot=(); [[ " $MODES " == *" cot "* ]] && cot=(--set "eval.cot_artifacts=[merged, \"gguf:Q8_0\"]")
[ ${#cot[@]} -eq 0 ] && cot=(--set "eval.cot_artifacts=null")
# eval.batch_size: the config's 128 is for a GPU; on a CPU, 8 pads less.
sets=(--set "output_dir=$RUNS" --set "data.files=[\"pubmedqa-train:$PQ\"]"
      --set "eval.benchmarks=[{name: pubmedqa, path: \"$PQ\"}]" --set "eval.batch_size=${BATCH:-8}")
rm -rf "$run" && mkdir -p "$run"
tar -xzf "$FROM/run.tar.gz" -C "$run"
mv "$run/eval" "$run/eval-gpu"
cat "$FROM"/adapter*.part.* > "$run/adapter/adapter_model.safetensors"
start=$(date +%s)
"$PY" -m medtune.cli prepare "$cfg" "${sets[@]}"  # the val split the export's quality table reads
"$PY" -m medtune.cli merge "$cfg" "${sets[@]}"
"$PY" -m medtune.cli export "$cfg" "${sets[@]}"
"$PY" -m medtune.cli eval "$cfg" "${sets[@]}" --set "eval.artifacts=[merged, \"gguf:Q8_0\"]" \
  --set "eval.modes=$modes" "${cot[@]}"
echo "merge + export + eval here: $(( $(date +%s) - start )) s"
"$PY" benchmarks/pubmedqa_reasoning.py gguf-check "$run" "$RESULTS" --machine "$(nproc) CPU cores, $(uname -m)"
