"""Does bf16 scoring on a CPU give the same answers as fp32?

`medtune eval --dtype auto` uses bf16 on CPUs with AVX512-BF16/AMX because it is several times
faster there. This scores the same PubMedQA items with the base model in fp32 and in bf16
(transformers backend, CPU, loglik) and reports both accuracies, the paired difference and how
many items get a different answer.

    python benchmarks/eval_dtype_agreement.py [--limit 200] [--pubmedqa ../shared/data/pubmedqa]

Results: appended to benchmarks/results/eval_dtype_agreement.json (medtune.benchmarking's schema).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from medtune.benchmarking import append_run, print_table
from medtune.config import BenchmarkSpec, EvalConfig
from medtune.eval.backends import cpu_has_fast_bf16
from medtune.eval.stage import evaluate_model
from medtune.eval.stats import paired_difference
from medtune.rundir import EvalFiles

HERE = Path(__file__).resolve().parent
BENCHMARK = "eval_dtype_agreement"


def score(model: str, spec: BenchmarkSpec, dtype: str, out: Path) -> dict:
    """Accuracy, CI, seconds and per-item predictions of `model` scored in `dtype` on the CPU."""
    cfg = EvalConfig(benchmarks=[spec], device="cpu", dtype=dtype, batch_size=8)
    started = time.perf_counter()
    result = evaluate_model(model, [spec], cfg, out)
    seconds = time.perf_counter() - started
    predictions_file = next(EvalFiles(out).predictions.glob("*.jsonl"))
    predictions = [json.loads(line) for line in predictions_file.read_text().splitlines()]
    row = result.rows[0]
    return {"dtype": dtype, "accuracy": row.accuracy, "ci95": list(row.ci95), "seconds": round(seconds, 1),
            "predictions": predictions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--pubmedqa", default=str(HERE.parent.parent / "shared" / "data" / "pubmedqa"))
    parser.add_argument("--limit", type=int, default=200)
    args = parser.parse_args()

    spec = BenchmarkSpec(name="pubmedqa", path=args.pubmedqa, limit=args.limit)
    with tempfile.TemporaryDirectory(prefix="medtune-dtype-") as scratch:
        runs = {dtype: score(args.model, spec, dtype, Path(scratch) / dtype) for dtype in ("fp32", "bf16")}

    fp32, bf16 = runs["fp32"].pop("predictions"), runs["bf16"].pop("predictions")
    if [p["id"] for p in fp32] != [p["id"] for p in bf16]:
        raise SystemExit("fp32 and bf16 scored different items: the comparison is not paired")
    same_answer = sum(a["predicted"] == b["predicted"] for a, b in zip(fp32, bf16, strict=True))
    diff = paired_difference([p["correct"] for p in bf16], [p["correct"] for p in fp32])
    rows = [runs["fp32"], runs["bf16"]]
    append_run(BENCHMARK, rows, what="base model PubMedQA loglik on CPU, bf16 vs fp32 weights (transformers backend)",
               model=args.model, n=len(fp32), fast_bf16_instructions=cpu_has_fast_bf16(), same_answer=same_answer,
               bf16_minus_fp32=diff)
    print_table(rows, ["dtype", "accuracy", "seconds"])
    print(f"same answer on {same_answer}/{len(fp32)} items; bf16 - fp32 = {100 * diff['difference']:+.1f} points "
          f"(paired 95% CI {100 * diff['ci95'][0]:+.1f} to {100 * diff['ci95'][1]:+.1f})")


if __name__ == "__main__":
    main()
