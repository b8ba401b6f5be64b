"""PubMedQA (PQA-L, 500-item test split) on the base SmolLM2-135M-Instruct: transformers and its Q8_0 GGUF.

    python benchmarks/eval_pubmedqa.py                      # CPU: HF (auto dtype) + llama.cpp Q8_0, loglik
    python benchmarks/eval_pubmedqa.py --dtype fp32 --backends hf   # the fp32 reference
    python benchmarks/eval_pubmedqa.py --device cuda --modes loglik cot --backends hf

Uses the same code path as `medtune eval` (medtune.eval.stage.evaluate_model). The Q8_0 file is
made once from the base model with medtune's llama.cpp converter and quantizer (cached under
runs/bench-base/). Results are merged into benchmarks/results/eval_pubmedqa_base.json, one entry
per backend/device/mode (a CPU run and a GPU run update their own entries), and printed as a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "pubmedqa"
RESULT = REPO / "benchmarks" / "results" / "eval_pubmedqa_base.json"
BASE = "embedded:smollm2-135m-instruct"


def make_base_q8(folder: Path) -> Path:
    """Base model -> HF folder -> F16 GGUF (llama.cpp converter) -> Q8_0 (llama.cpp quantizer), cached."""
    from medtune import llamacpp
    from medtune.config import ModelConfig
    from medtune.modeling import load_base_model
    from medtune.tokenizer import load_tokenizer

    q8 = folder / "SmolLM2-135M-Instruct-Q8_0.gguf"
    if q8.is_file():
        return q8
    hf = folder / "hf"
    if not (hf / "config.json").is_file():
        cfg = ModelConfig(base=BASE)
        load_base_model(cfg).save_pretrained(hf)
        load_tokenizer(cfg).save_pretrained(hf)
    f16 = llamacpp.convert_to_gguf(hf, folder / "SmolLM2-135M-Instruct-F16.gguf", "f16")
    return llamacpp.quantize_gguf(f16, q8, "Q8_0")


def cpu_load() -> str:
    try:
        one, five, _ = os.getloadavg()
        return f"{one:.2f} / {five:.2f} (1 / 5 min) on {os.cpu_count()} cores"
    except OSError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="PubMedQA release folder (ori_pqal.json + test_ground_truth.json)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--modes", nargs="+", default=["loglik"], choices=["loglik", "cot"])
    parser.add_argument("--backends", nargs="+", default=["hf", "llamacpp"], choices=["hf", "llamacpp"])
    parser.add_argument("--gguf", help="Q8_0 GGUF of the base model (default: made and cached under runs/bench-base)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8 on CPU, 64 on GPU")
    parser.add_argument("--limit", type=int, default=None, help="seeded subset (default: all 500)")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None, help="torch / llama.cpp threads (default: all cores)")
    parser.add_argument("--out", default=str(RESULT))
    args = parser.parse_args()

    import torch

    from medtune.config import BenchmarkSpec, EvalConfig
    from medtune.eval.stage import evaluate_model

    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    batch = args.batch_size or (64 if gpu else 8)
    spec = BenchmarkSpec(name="pubmedqa", path=args.data, limit=args.limit)
    cfg = EvalConfig(benchmarks=[spec], modes=args.modes, device=args.device, dtype=args.dtype, batch_size=batch,
                     max_new_tokens=args.max_new_tokens, n_threads=args.threads)
    work = REPO / "runs" / "bench-base"
    load_before = cpu_load()
    device = torch.cuda.get_device_name(0) if gpu else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    backends: dict[str, dict] = {}
    for backend in args.backends:
        if backend == "llamacpp":
            model = args.gguf or str(make_base_q8(work))
            label = "llama.cpp Q8_0"
        else:
            model, label = BASE, f"transformers {'GPU' if gpu else 'CPU'}"
        started, cpu_started = time.perf_counter(), time.process_time()
        result = evaluate_model(model, [spec], cfg, work / f"eval-{backend}", on_event=print)
        wall = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started  # all threads; on a shared CPU, wall time alone misleads
        for row in result.rows:
            backends[f"{backend}-{'cuda' if gpu and backend == 'hf' else 'cpu'}/{row.mode}"] = {
                "backend": label,
                "device": device if backend == "hf" else f"{platform.machine()}, {args.threads or os.cpu_count()} threads",
                "dtype": (args.dtype if backend == "hf" else "Q8_0"),
                "batch_size": batch if backend == "hf" else 1,
                "model": model,
                "mode": row.mode,
                "accuracy": row.accuracy,
                "ci95": list(row.ci95),
                "n": row.n,
                "seconds": row.seconds,
                "items_per_second": row.items_per_second,
                "parse_failure_rate": row.parse_failure_rate,
                "wall_seconds_with_loading": round(wall, 1),
                "process_cpu_seconds_with_loading": round(cpu_seconds, 1),
                "cpu_load_before": load_before,
                "cpu_load_after": cpu_load(),
            }
    majority = result.rows[0].majority_baseline if result.rows else None
    out = Path(args.out)
    record = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else {}
    record.update({
        "benchmark": "pubmedqa (PQA-L test, 500 items)" if not args.limit else f"pubmedqa (seeded {args.limit}-item subset)",
        "model": "SmolLM2-135M-Instruct (embedded)",
        "majority_baseline": majority,
    })
    record["backends"] = {**record.get("backends", {}), **backends}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"\n{'backend':<24}{'mode':<8}{'accuracy':>9}{'95% CI':>15}{'n':>5}{'seconds':>9}{'items/s':>9}")
    for row in backends.values():
        ci = f"{row['ci95'][0]:.3f}-{row['ci95'][1]:.3f}"
        print(f"{row['backend']:<24}{row['mode']:<8}{row['accuracy']:>9.3f}{ci:>15}{row['n']:>5}{row['seconds']:>9.1f}"
              f"{row['items_per_second']:>9.2f}")
    print(f"majority-label baseline {majority}; CPU load before/after: {load_before} | {cpu_load()}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
