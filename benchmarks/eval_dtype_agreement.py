"""Does bf16 scoring on a CPU give the same answers as fp32?

`medtune eval --dtype auto` uses bf16 on CPUs with AVX512-BF16/AMX because it is several times
faster there. This scores the same PubMedQA items with the base model in fp32 and in bf16
(transformers backend, CPU, loglik) and reports both accuracies, the paired difference and how
many items get a different answer.

    python benchmarks/eval_dtype_agreement.py [--limit 200] [--pubmedqa ../shared/data/pubmedqa]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from medtune.config import BenchmarkSpec, EvalConfig
from medtune.eval.backends import cpu_has_fast_bf16
from medtune.eval.stage import evaluate_model
from medtune.eval.stats import paired_difference

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--pubmedqa", default=str(HERE.parent.parent / "shared" / "data" / "pubmedqa"))
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--out", default=str(HERE / "results" / "eval_dtype_agreement.json"))
    args = parser.parse_args()

    spec = BenchmarkSpec(name="pubmedqa", path=args.pubmedqa, limit=args.limit)
    runs = {}
    for dtype in ("fp32", "bf16"):
        cfg = EvalConfig(benchmarks=[spec], device="cpu", dtype=dtype, batch_size=8)
        out = Path(f"/tmp/medtune-dtype-{dtype}")
        started = time.perf_counter()
        result = evaluate_model(args.model, [spec], cfg, out)
        seconds = time.perf_counter() - started
        preds = [json.loads(line) for line in next((out / "predictions").glob("*.jsonl")).read_text().splitlines()]
        runs[dtype] = {"row": result.rows[0], "seconds": round(seconds, 1), "predictions": preds}

    fp32, bf16 = runs["fp32"]["predictions"], runs["bf16"]["predictions"]
    assert [p["id"] for p in fp32] == [p["id"] for p in bf16]
    same_answer = sum(a["predicted"] == b["predicted"] for a, b in zip(fp32, bf16, strict=True))
    diff = paired_difference([p["correct"] for p in bf16], [p["correct"] for p in fp32])
    result = {
        "what": "base model PubMedQA loglik on CPU, bf16 vs fp32 weights (transformers backend)",
        "machine": f"{platform.node()}, {os.cpu_count()} cores, fast bf16 instructions: {cpu_has_fast_bf16()}",
        "date": time.strftime("%Y-%m-%d"),
        "model": args.model,
        "n": len(fp32),
        "fp32": {"accuracy": runs["fp32"]["row"]["accuracy"], "ci95": runs["fp32"]["row"]["ci95"], "seconds": runs["fp32"]["seconds"]},
        "bf16": {"accuracy": runs["bf16"]["row"]["accuracy"], "ci95": runs["bf16"]["row"]["ci95"], "seconds": runs["bf16"]["seconds"]},
        "same_answer": same_answer,
        "bf16_minus_fp32": diff,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'dtype':<6}{'accuracy':>10}{'seconds':>9}")
    for dtype in ("fp32", "bf16"):
        print(f"{dtype:<6}{100 * result[dtype]['accuracy']:>9.1f}%{result[dtype]['seconds']:>9}")
    print(f"same answer on {same_answer}/{len(fp32)} items; bf16 - fp32 = {100 * diff['difference']:+.1f} points "
          f"(paired 95% CI {100 * diff['ci95'][0]:+.1f} to {100 * diff['ci95'][1]:+.1f})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
