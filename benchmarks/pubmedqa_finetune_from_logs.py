"""Rebuild benchmarks/results/pubmedqa_finetune_2026-11-29.json (the second run) from the H200 acceptance run's saved logs.

The second acceptance run (2026-11-29) spent its device time before `gpu_pubmedqa_finetune.sh`
could write its own JSON: the eval stage was cut off by the per-call time limit twice, and the
quantized files were then scored one by one with `medtune eval --model FILE.gguf`. Every figure
below is parsed from the logs committed in benchmarks/results/logs/ (progress bars stripped), so
the JSON can be checked against them.

    python benchmarks/pubmedqa_finetune_from_logs.py
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOGS = HERE / "results" / "logs"
OUT = HERE / "results" / "pubmedqa_finetune_2026-11-29.json"
PREFIX = "pubmedqa_finetune_h200_s2_"

# "<artifact> pubmedqa <mode>: accuracy 0.598 (95% CI 0.554-0.642, n=500, 1 s)", possibly wrapped by rich.
ROW = re.compile(
    r"(?:^|\s)(?P<artifact>\S+) pubmedqa (?P<mode>loglik|cot): accuracy (?P<acc>[\d.]+) "
    r"\(95% CI (?P<lo>[\d.]+)-(?P<hi>[\d.]+),\s*n=(?P<n>\d+),\s*(?P<s>\d+)\s*s\)",
    re.MULTILINE,
)
# "│ merged   │ pubmedqa │ cot  │ 61.6     │ 56.8-65.8 │ 500 │ 0.2      │ 63.5    │"
TABLE_ROW = re.compile(r"│ pubmedqa │ (?P<mode>loglik|cot)\s*│ (?P<acc>[\d.]+)\s*│[^│]*│[^│]*│ (?P<unparsed>[\d.]+)\s*│")

SOURCES = [  # (log, artifact in the log -> name in the table, backend, note)
    ("call4_eval.log", "base", "base", "transformers (H200, bf16)", ""),
    ("call4_eval.log", "merged", "finetuned", "transformers (H200, bf16), merged model", ""),
    ("call4_eval.log", "gguf:F16", "F16", "llama.cpp (CPU)",
     "scored in the eval stage with 4 GGUF files side by side at 3 threads each (an experiment, since "
     "removed): its time is not comparable; the stage was then cut off by the call limit"),
    ("call6_Q8_0.log", "gguf:pubmedqa-smollm2-Q8_0", "Q8_0", "llama.cpp (CPU, 16 threads)", "medtune eval --model FILE.gguf"),
    ("call6_Q4_K_M.log", "gguf:pubmedqa-smollm2-Q4_K_M", "Q4_K_M", "llama.cpp (CPU, 16 threads)", "medtune eval --model FILE.gguf"),
    ("call3_cot_base.log", "embedded:smollm2-135m-instruct", "base", "transformers (H200, bf16)", "max 256 new tokens, batch 64"),
    ("call3_cot_finetuned.log", "merged", "finetuned", "transformers (H200, bf16), merged model", "max 256 new tokens, batch 64"),
]


def parse(log: str) -> dict[tuple[str, str], dict]:
    text = (LOGS / (PREFIX + log)).read_text(encoding="utf-8")
    text = re.sub(r" \n", " ", re.sub(r",\s*\n", ", ", text))  # undo rich's line wrapping at 80 columns
    found = {}
    for m in ROW.finditer(text):
        found[(m["artifact"], m["mode"])] = {
            "accuracy": float(m["acc"]), "ci95": [float(m["lo"]), float(m["hi"])], "n": int(m["n"]), "seconds": int(m["s"]),
        }
    for m in TABLE_ROW.finditer(text):  # the summary table adds the unparsed share (cot)
        for key in found:
            if key[1] == m["mode"] and round(100 * found[key]["accuracy"], 1) == float(m["acc"]):
                found[key]["parse_failure_rate"] = round(float(m["unparsed"]) / 100, 4)
    return found


def difference(a: dict, b: dict) -> dict:
    """a - b with an unpaired normal-approximation 95% CI (conservative: the items are the same)."""
    diff = a["accuracy"] - b["accuracy"]
    se = math.sqrt(a["accuracy"] * (1 - a["accuracy"]) / a["n"] + b["accuracy"] * (1 - b["accuracy"]) / b["n"])
    return {"points": round(100 * diff, 1), "ci95_points": [round(100 * (diff - 1.96 * se), 1), round(100 * (diff + 1.96 * se), 1)],
            "z": round(diff / se, 2)}


def main() -> None:
    tables: dict[str, dict[str, dict]] = {"loglik": {}, "cot": {}}
    for log, artifact, name, backend, note in SOURCES:
        rows = parse(log)
        mode = "cot" if "cot" in log else "loglik"
        row = rows[(artifact, mode)]
        tables[mode][name] = {"backend": backend, **row, "log": PREFIX + log, **({"note": note} if note else {})}
    q4 = json.loads((LOGS / (PREFIX + "call6_Q4_K_M_results.json")).read_text())["results"][0]
    assert q4["accuracy"] == tables["loglik"]["Q4_K_M"]["accuracy"], "log and results.json disagree"

    manifest = json.loads((LOGS / (PREFIX + "manifest.json")).read_text())
    stages = manifest["stages"]
    export_files = {f["type"]: {k: f[k] for k in ("size_bytes", "bits_per_weight", "versus", "top1_agreement", "mean_kl")}
                    for f in stages["export"]["files"]}
    ll, cot = tables["loglik"], tables["cot"]
    previous = json.loads(OUT.read_text()) if OUT.is_file() else {}
    previous_run = previous.get("previous_run") or {k: previous[k] for k in ("date", "command", "train", "loglik", "cot", "bars") if k in previous}
    summary = {
        "what": "SmolLM2-135M-Instruct fine-tuned (LoRA r=16, all-linear, 3 epochs) on the 500 PubMedQA PQA-L "
                "train/dev records, evaluated on the standard 500-item test split",
        "machine": "one NVIDIA H200 (device kind nvidia-h200), 16 CPU cores; llama.cpp CPU build (AVX2, no AMX)",
        "date": "2026-11-29",
        "command": "CARRY=/root/carry bash benchmarks/gpu_pubmedqa_finetune.sh --set train.compile=off "
                   "--set train.max_tokens_per_batch=4096 --set train.gradient_accumulation_steps=1 "
                   "--set eval.batch_size=64 --set eval.n_threads=3; then, per quant: "
                   "medtune eval --model runs/pubmedqa-smollm2/gguf/pubmedqa-smollm2-<Q>.gguf --benchmark pubmedqa --path <PQ>",
        "source": "parsed from benchmarks/results/logs/pubmedqa_finetune_h200_s2_* by benchmarks/pubmedqa_finetune_from_logs.py",
        "stage_seconds": {name: stages[name].get("seconds") for name in ("prepare", "train", "merge", "export")},
        "train": {"optimizer_steps": stages["train"]["steps"], "train_seconds": stages["train"]["train_seconds"],
                  "tokens_seen": stages["train"]["tokens_seen"], "final_train_loss": round(stages["train"]["train_loss"], 3),
                  "first_val_loss": round(stages["train"]["first_val_loss"], 3), "final_val_loss": round(stages["train"]["val_loss"], 3)},
        "merge_check": {k: stages["merge"][k] for k in ("top1_agreement", "max_abs_diff", "dtype")},
        "gguf_files": export_files,
        "loglik": ll,
        "cot": cot,
        "not_measured": {"Q5_K_M": "exported and verified, but not scored on PubMedQA: the session's device time ran out"},
        "differences": {
            "loglik_finetuned_minus_base": difference(ll["finetuned"], ll["base"]),
            "cot_finetuned_minus_base": difference(cot["finetuned"], cot["base"]),
            "Q8_0_minus_F16": round(100 * (ll["Q8_0"]["accuracy"] - ll["F16"]["accuracy"]), 1),
            "Q4_K_M_minus_F16": round(100 * (ll["Q4_K_M"]["accuracy"] - ll["F16"]["accuracy"]), 1),
        },
        "bars": {
            "loglik: fine-tuned above base outside the 95% CIs": ll["finetuned"]["ci95"][0] > ll["base"]["ci95"][1],
            "cot: fine-tuned above base outside the 95% CIs (intervals may not even touch)":
                cot["finetuned"]["ci95"][0] > cot["base"]["ci95"][1],
            "cot: each point estimate outside the other's 95% CI":
                cot["finetuned"]["accuracy"] > cot["base"]["ci95"][1] and cot["base"]["accuracy"] < cot["finetuned"]["ci95"][0],
            "Q8_0 within 1 point of F16": abs(ll["Q8_0"]["accuracy"] - ll["F16"]["accuracy"]) <= 0.01 + 1e-9,
        },
        "previous_run": previous_run,
    }
    OUT.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{'mode':<8}{'artifact':<12}{'accuracy':>9}  {'95% CI':<14}{'n':>5}{'seconds':>9}")
    for mode, table in tables.items():
        for name, row in table.items():
            print(f"{mode:<8}{name:<12}{100 * row['accuracy']:>8.1f}%  {100 * row['ci95'][0]:.1f}-{100 * row['ci95'][1]:.1f}"
                  f"{row['n']:>8}{row['seconds']:>9}")
    for name, value in summary["differences"].items():
        print(f"{name}: {value}")
    for bar, met in summary["bars"].items():
        print(f"{'met ' if met else 'MISSED'}  {bar}")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
