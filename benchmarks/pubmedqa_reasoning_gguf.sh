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
"$PY" - "$run" "$RESULTS" "$(nproc) CPU cores, $(uname -m)" <<'PYEOF'
import json, sys
from pathlib import Path

run, results_path, machine = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
evaluated = json.loads((run / "eval" / "results.json").read_text())
keep = ("artifact", "backend", "benchmark", "mode", "n", "accuracy", "ci95", "macro_f1", "recall", "predicted",
        "parse_failure_rate", "seconds")
manifest = json.loads((run / "manifest.json").read_text())
export = manifest.get("stages", {}).get("export", {})
check = {"machine": machine, "what": "adapter from the GPU run merged here (fp32), exported by llama.cpp; merged and "
         "Q8_0 scored here on the same 500 test items",
         "rows": [{k: row.get(k) for k in keep} for row in evaluated["results"]],
         "paired": [c for c in evaluated.get("comparisons", []) if c["artifact"].startswith("gguf")],
         "export": {k: export.get(k) for k in ("quality", "verification", "files") if k in export}}
results = json.loads(results_path.read_text())
results["gguf_check"] = check
tmp = results_path.with_suffix(".tmp")
tmp.write_text(json.dumps(results, indent=1))
tmp.replace(results_path)
for row in check["rows"]:
    print(f"{row['artifact']:<12}{row['mode']:<8}{100 * row['accuracy']:6.1f}%  macro-F1 {row['macro_f1']:.3f}  {row['predicted']}")
for c in check["paired"]:
    print(f"{c['artifact']} vs {c['versus']} {c['mode']}: {100 * c['difference']:+.1f} (paired CI "
          f"{100 * c['ci95'][0]:+.1f} to {100 * c['ci95'][1]:+.1f})")
PYEOF
