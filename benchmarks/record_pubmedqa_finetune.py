"""Write benchmarks/results/pubmedqa_finetune.json from one H200 acceptance run (issue 6).

`benchmarks/gpu_pubmedqa_finetune.sh` leaves, in the device's $OUT, its summary
(`pubmedqa_finetune.json`: every accuracy with its CI, the paired comparisons) and the run's
`manifest.json`; both are committed under benchmarks/results/logs/ with the run's prefix. This
script adds what a reader needs to judge the numbers: the training and export figures from the
manifest, the issue's bars checked two ways, and, given the per-item predictions (which stay out of
the repository: they carry the test split's gold labels), how each model spreads its answers over
yes/no/maybe and its macro-F1, since always answering "yes" already scores the majority baseline.

    python benchmarks/record_pubmedqa_finetune.py --predictions /path/to/unpacked/predictions
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOGS = HERE / "results" / "logs"
PREFIX = "pubmedqa_finetune_h200_s3_"
LABELS = ("yes", "no", "maybe")

RUN = {
    "what": "SmolLM2-135M-Instruct fine-tuned (LoRA r=16, all-linear, 3 epochs) on the 500 PubMedQA PQA-L "
    "train/dev records, evaluated on the standard 500-item test split",
    "machine": "one NVIDIA H200 (device kind nvidia-h200), 16 CPU cores; llama.cpp CPU build (AVX2, no AMX)",
    "date": "2026-12-02",
    "command": "CARRY=/root/carry bash benchmarks/gpu_pubmedqa_finetune.sh --set train.compile=off "
    "--set train.max_tokens_per_batch=4096 --set train.gradient_accumulation_steps=1 --set eval.batch_size=64",
    "calls": "three 600 s device calls of the same command: the first ran prepare..export, the cot evals and "
    "the eval stage up to F16; the second and third resumed the eval stage from eval-partial/ "
    "(Q4_K_M, Q5_K_M; then Q8_0) and the third wrote the summary",
    "earlier_runs": ["pubmedqa_finetune_2026-11-29.json (second run; it embeds the first, 2026-11-28)"],
}
# Where each summary row's predictions file lies inside the unpacked archive.
PREDICTION_FILES = {
    ("base", "loglik"): "eval/predictions/base__pubmedqa__loglik.jsonl",
    ("merged", "loglik"): "eval/predictions/merged__pubmedqa__loglik.jsonl",
    ("gguf:F16", "loglik"): "eval/predictions/gguf-F16__pubmedqa__loglik.jsonl",
    ("gguf:Q4_K_M", "loglik"): "eval/predictions/gguf-Q4_K_M__pubmedqa__loglik.jsonl",
    ("gguf:Q5_K_M", "loglik"): "eval/predictions/gguf-Q5_K_M__pubmedqa__loglik.jsonl",
    ("gguf:Q8_0", "loglik"): "eval/predictions/gguf-Q8_0__pubmedqa__loglik.jsonl",
    ("base", "cot"): "eval-cot-base/predictions/embedded-smollm2-135m-instruct__pubmedqa__cot.jsonl",
    ("merged", "cot"): "eval-cot-finetuned/predictions/merged__pubmedqa__cot.jsonl",
}


def answer_spread(path: Path) -> dict:
    """Predicted-label counts, recall per gold label and macro-F1 (unparsed answers count as wrong)."""
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    predicted = Counter(str(r["predicted"]) if r["predicted"] is not None else "unparsed" for r in records)
    f1s, recall = [], {}
    for label in LABELS:
        hits = sum(r["predicted"] == label and r["answer"] == label for r in records)
        gold = sum(r["answer"] == label for r in records)
        said = sum(r["predicted"] == label for r in records)
        recall[label] = round(hits / gold, 4) if gold else None
        f1s.append(2 * hits / (gold + said) if gold + said else 0.0)
    return {"predicted": dict(predicted), "recall": recall, "macro_f1": round(sum(f1s) / len(f1s), 4)}


def record(summary: dict, manifest: dict, predictions: Path | None) -> dict:
    stages = manifest["stages"]
    rows = {(r["artifact"], r["mode"]): r for r in summary["results"]}
    comparisons = {(c["artifact"], c["versus"], c["mode"]): c for c in summary["comparisons"]}
    results = {}
    for (artifact, mode), row in rows.items():
        entry = {k: row.get(k) for k in ("backend", "accuracy", "ci95", "n", "seconds", "parse_failure_rate")}
        if predictions:
            entry.update(answer_spread(predictions / PREDICTION_FILES[(artifact, mode)]))
        results.setdefault(mode, {})[artifact] = entry

    def fine_tune_bar(mode: str) -> dict:
        base, tuned = rows[("base", mode)], rows[("merged", mode)]
        paired = comparisons[("merged", "base", mode)]
        return {
            "difference_points": round(100 * paired["difference"], 1),
            "paired_ci95_points": [round(100 * x, 1) for x in paired["ci95"]],
            "met_paired_ci_excludes_zero": paired["ci95"][0] > 0,
            "met_intervals_disjoint": tuned["ci95"][0] > base["ci95"][1],
        }

    q8 = comparisons[("gguf:Q8_0", "gguf:F16", "loglik")]
    export = stages["export"]
    return {
        **RUN,
        "stage_seconds": {name: stage.get("seconds") for name, stage in stages.items()},
        "eval_seconds_per_artifact": {f"{a}/{m}": rows[(a, m)]["seconds"] for a, m in rows},
        "train": {k: stages["train"].get(k) for k in
                  ("steps", "train_seconds", "tokens_seen", "first_val_loss", "val_loss", "train_loss")},
        "merge_check": {k: stages["merge"].get(k) for k in ("dtype", "positions", "top1_agreement", "max_abs_diff")},
        "gguf_files": {f["type"]: {k: f.get(k) for k in ("size_bytes", "bits_per_weight", "versus", "top1_agreement", "mean_kl")}
                       for f in export["files"]},
        "majority_baseline": summary["results"][0].get("majority_baseline"),
        "results": results,
        "comparisons": summary["comparisons"],
        "bars": {
            "loglik: fine-tuned above base": fine_tune_bar("loglik"),
            "cot: fine-tuned above base": fine_tune_bar("cot"),
            "Q8_0 within 1 point of F16": {
                "difference_points": round(100 * q8["difference"], 1),
                "paired_ci95_points": [round(100 * x, 1) for x in q8["ci95"]],
                "met": abs(q8["difference"]) <= 0.01,
            },
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--summary", type=Path, default=LOGS / f"{PREFIX}summary.json")
    parser.add_argument("--manifest", type=Path, default=LOGS / f"{PREFIX}manifest.json")
    parser.add_argument("--predictions", type=Path, help="the run folder's eval*/predictions, unpacked from the device")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "pubmedqa_finetune.json")
    args = parser.parse_args()
    summary = json.loads(args.summary.read_text(encoding="utf-8"))
    manifest = json.loads(args.manifest.read_text(encoding="utf-8"))
    out = record(summary, manifest, args.predictions)
    args.out.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")

    print(f"{'mode':<8}{'artifact':<14}{'acc %':>7}  {'95% CI':<12}{'macro-F1':>9}  answers")
    for mode, by_artifact in out["results"].items():
        for artifact, r in by_artifact.items():
            lo, hi = (100 * x for x in r["ci95"])
            f1 = f"{r['macro_f1']:.3f}" if "macro_f1" in r else "-"
            print(f"{mode:<8}{artifact:<14}{100 * r['accuracy']:>7.1f}  {lo:.1f}-{hi:.1f}  {f1:>9}  {r.get('predicted', '')}")
    print(f"majority baseline {100 * out['majority_baseline']:.1f}%")
    for name, bar in out["bars"].items():
        print(f"{name}: {json.dumps(bar)}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
