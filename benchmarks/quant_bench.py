"""Every quant with and without an importance matrix, on held-out medical text (issue 13).

Both models go through medtune's own export stage (`medtune.export.export_gguf`) on a scratch copy
of their run, with every type of TYPES, `export.compare_without_imatrix` (each type also made
without the imatrix and measured), `export.adapter_gguf` (the LoRA adapter as GGUF, checked on its
base against the merged file) and no bars (this measures; the bars are the export's job). The
imatrix is computed on the run's train split; perplexity, mean / 99th-percentile KL and top-1
agreement against the 16-bit file come from llama.cpp's llama-perplexity on the run's val split.

(a) demo: the demo run (`medtune run configs/demo.yaml` first). SmolLM2-135M-Instruct, whose
    embedded base is a Q4_1 GGUF: every other grid rounds its weights a second time, and its hidden
    size (576) is not a multiple of 256, so K/IQ types fall back to other types on most tensors.
(b) tiny_bf16_llama: made here from a LlamaConfig (hidden 256, intermediate 768, 6 layers, SmolLM2's
    tokenizer and chat template), pretrained from scratch in bf16-saved weights on PubMedQA abstracts
    (the PQA-L records outside the test split: contexts + long answers; nothing of the run's data),
    then a medtune run on the shipped ReasonMed-style sample (prepare, LoRA train, merge). A weak
    language model, but one whose next-token distributions are peaked by training, with no first
    rounding, and whose every matrix is K-quant shaped.

    python benchmarks/quant_bench.py [--demo-run runs/demo] [--pubmedqa ../shared/data/pubmedqa]

Results: benchmarks/results/quant_bench.json (per model and type, with and without imatrix:
size_bytes, bits_per_weight, perplexity, mean_kl, p99_kl, top1_agreement; adapter_top1_vs_merged).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "quant_bench.json"
TYPES = ["Q8_0", "Q5_K_M", "Q4_K_M", "IQ4_XS", "Q3_K_M", "IQ3_M", "Q2_K"]
FIGURES = ("size_bytes", "bits_per_weight", "perplexity", "mean_kl", "p99_kl", "top1_agreement")
TINY_SHAPE = {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 6, "num_attention_heads": 4,
              "num_key_value_heads": 2}


def export_all_types(config, label: str) -> dict:
    """Run the export stage with every type, the no-imatrix comparison and the adapter GGUF; the model's JSON entry."""
    from medtune.export import export_gguf

    config.export.quant_types = TYPES
    config.export.imatrix = "auto"
    config.export.compare_without_imatrix = True
    config.export.adapter_gguf = True
    config.export.max_mean_kl = {}
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    result = export_gguf(config)
    seconds = time.perf_counter() - started
    quality = result.quality
    types: dict = {}
    for row in quality["rows"]:
        entry = types.setdefault(row["type"], {})
        key = "reference" if row["mean_kl"] is None else ("imatrix" if row["imatrix"] else "no_imatrix")
        entry[key] = {k: row[k] for k in FIGURES}
    return {
        "corpus": quality["corpus"], "corpus_tokens": quality["tokens"], "ctx": quality["ctx"], "chunks": quality["chunks"],
        "positions": quality["positions"], "imatrix": result.imatrix, "types": types,
        "adapter_top1_vs_merged": result.adapter["top1_vs_merged"], "adapter_mean_kl_vs_merged": result.adapter["mean_kl_vs_merged"],
        "adapter_positions": result.adapter["positions"], "f16_top1_vs_merged_hf": result.f16_top1_agreement,
        "export_seconds": round(seconds, 1), "timings": result.timings,
        "load_average": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "label": label,
    }


def demo_entry(demo_run: Path, scratch: Path) -> dict:
    from medtune.config import load_config

    if not (demo_run / "merged" / "config.json").is_file():
        raise SystemExit(f"{demo_run} has no merged model: run `medtune run configs/demo.yaml` first")
    config = load_config(demo_run / "config.yaml", [f"output_dir={scratch}"])
    target = config.run_dir
    for part in ("data", "adapter", "merged"):
        shutil.copytree(demo_run / part, target / part)
    entry = export_all_types(config, "demo run (SmolLM2-135M-Instruct from the embedded Q4_1 GGUF, LoRA)")
    manifest = json.loads((demo_run / "manifest.json").read_text())["stages"]
    entry["run"] = {"train_steps": manifest.get("train", {}).get("steps") or manifest.get("train", {}).get("global_step"),
                    "config": str(demo_run / "config.yaml")}
    return entry


def pretraining_texts(pubmedqa: Path) -> list[str]:
    """PQA-L abstracts (contexts + long answer) outside the 500-item test split."""
    records = json.loads((pubmedqa / "ori_pqal.json").read_text(encoding="utf-8"))
    test_ids = set(json.loads((pubmedqa / "test_ground_truth.json").read_text(encoding="utf-8")))
    return ["\n".join(r["CONTEXTS"]) + "\n" + r["LONG_ANSWER"] for pmid, r in records.items() if pmid not in test_ids]


def pretrain_tiny_llama(folder: Path, texts: list[str], *, steps: int, seq_len: int = 256, batch: int = 8) -> dict:
    """A LlamaConfig model trained from scratch on `texts` with transformers' Trainer; saved in bf16."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, Trainer, TrainingArguments

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    ids = [t for text in texts for t in tokenizer(text + tokenizer.eos_token, add_special_tokens=False)["input_ids"]]
    blocks = [ids[i:i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)]
    held = max(8, len(blocks) // 20)
    train, held_out = blocks[held:], blocks[:held]
    data = datasets.Dataset.from_dict({"input_ids": train, "labels": train})
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    args = TrainingArguments(
        output_dir=str(folder / "pretrain-checkpoints"), max_steps=steps, per_device_train_batch_size=batch,
        learning_rate=3e-3, warmup_steps=max(1, steps // 10), lr_scheduler_type="cosine", weight_decay=0.01,
        logging_steps=10, save_strategy="no", report_to=[], use_cpu=True, seed=0, dataloader_drop_last=True,
    )
    started = time.perf_counter()
    Trainer(model=model, args=args, train_dataset=data).train()
    seconds = time.perf_counter() - started
    model.eval()
    with torch.inference_mode():
        losses = [float(model(input_ids=torch.tensor([b]), labels=torch.tensor([b])).loss) for b in held_out]
    shutil.rmtree(folder / "pretrain-checkpoints", ignore_errors=True)
    model.to(torch.bfloat16).save_pretrained(str(folder))
    assert isinstance(LlamaConfig.from_pretrained(str(folder)), LlamaConfig)
    loss = sum(losses) / len(losses)
    return {"tokens": len(ids), "train_blocks": len(train), "steps": steps, "seq_len": seq_len, "batch": batch,
            "seconds": round(seconds, 1), "held_out_blocks": held, "held_out_loss": round(loss, 4),
            "held_out_perplexity": round(float(torch.exp(torch.tensor(loss))), 2)}


def tiny_entry(scratch: Path, pubmedqa: Path, steps: int) -> dict:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from medtune.config import load_config
    from medtune.pipeline import run_pipeline
    from medtune.tokenizer import load_tokenizer

    folder = scratch / "tiny-bf16-llama"
    base_model = load_config(REPO / "configs" / "demo.yaml").model
    tokenizer = load_tokenizer(base_model)  # SmolLM2's tokenizer and ChatML template, pad token fixed
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **TINY_SHAPE)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    n_params = sum(p.numel() for p in model.parameters())
    del model
    pretraining = pretrain_tiny_llama(folder, pretraining_texts(pubmedqa), steps=steps)
    dtypes = {json.loads((folder / "config.json").read_text()).get("dtype") or json.loads((folder / "config.json").read_text()).get("torch_dtype")}

    # A medtune run on the shipped sample: its train split calibrates the imatrix, its val split is held out.
    run_config = load_config(REPO / "configs" / "demo.yaml", [
        f"output_dir={scratch}", "name=tiny-bf16-llama-run", f"model.base={folder}", "train.test_question=false",
        "eval.benchmarks=[]", "export.answer_max_tokens=32", "export.require_eos_stop=false",
    ])
    started = time.perf_counter()
    run_pipeline(run_config, until="merge")
    pipeline_seconds = time.perf_counter() - started
    entry = export_all_types(run_config, "tiny Llama from a LlamaConfig, bf16 weights, pretrained here, LoRA by medtune")
    entry["model"] = {"shape": TINY_SHAPE, "vocab": len(tokenizer), "parameters": n_params, "saved_dtype": sorted(map(str, dtypes)),
                      "pretraining": {**pretraining, "corpus": f"{pubmedqa}/ori_pqal.json: PQA-L abstracts outside the test split"}}
    entry["run"] = {"data": "builtin:reasonmed-sample (configs/demo.yaml's data section)", "prepare_train_merge_seconds": round(pipeline_seconds, 1)}
    return entry


def verdicts(models: dict) -> dict:
    out = {}
    for name, entry in models.items():
        lowers = {}
        for type_name in ("Q4_K_M", "Q3_K_M"):
            pair = entry["types"][type_name]
            lowers[f"imatrix_lowers_{type_name}_mean_kl"] = pair["imatrix"]["mean_kl"] < pair["no_imatrix"]["mean_kl"]
        out[name] = lowers
    return out


def print_table(name: str, entry: dict) -> None:
    print(f"\n{name}: {entry['corpus']}, {entry['positions']} positions (ctx {entry['ctx']}); imatrix {entry['imatrix']['source']}, "
          f"{entry['imatrix']['chunks']} chunks")
    print(f"{'type':<8}{'imatrix':>8}{'MiB':>8}{'bpw':>7}{'PPL':>10}{'mean KL':>10}{'p99 KL':>9}{'top-1':>8}")
    for type_name, pair in entry["types"].items():
        for key, row in pair.items():
            kl = "-" if row["mean_kl"] is None else f"{row['mean_kl']:.4f}"
            p99 = "-" if row["p99_kl"] is None else f"{row['p99_kl']:.3f}"
            top1 = "-" if row["top1_agreement"] is None else f"{100 * row['top1_agreement']:.1f}%"
            flag = {"reference": "-", "imatrix": "yes", "no_imatrix": "no"}[key]
            print(f"{type_name:<8}{flag:>8}{row['size_bytes'] / 2**20:>8.1f}{row['bits_per_weight']:>7.2f}{row['perplexity']:>10.3f}"
                  f"{kl:>10}{p99:>9}{top1:>8}")
    print(f"adapter GGUF on its base vs merged F16: top-1 {100 * entry['adapter_top1_vs_merged']:.2f}% over {entry['adapter_positions']} positions")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-run", type=Path, default=REPO / "runs" / "demo")
    parser.add_argument("--pubmedqa", type=Path, default=REPO.parent / "shared" / "data" / "pubmedqa")
    parser.add_argument("--pretrain-steps", type=int, default=80)
    parser.add_argument("--only", choices=["demo", "tiny"], help="measure one model only")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    from medtune import llamacpp

    result: dict = {
        "what": "each quant type with and without an importance matrix (computed on the run's train split) vs the 16-bit "
                "GGUF on the run's held-out val split, by llama.cpp's llama-perplexity, through medtune's export stage",
        "command": "python benchmarks/quant_bench.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores)",
        "llama_cpp": llamacpp.runtime_description(),
        "date": time.strftime("%Y-%m-%d"),
        "load_average_start": round(os.getloadavg()[0], 2),
        "models": {},
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medtune-quant-bench-") as scratch:
        if args.only in (None, "demo"):
            result["models"]["demo"] = demo_entry(args.demo_run, Path(scratch))
            print_table("demo", result["models"]["demo"])
        if args.only in (None, "tiny"):
            result["models"]["tiny_bf16_llama"] = tiny_entry(Path(scratch), args.pubmedqa, args.pretrain_steps)
            print_table("tiny_bf16_llama", result["models"]["tiny_bf16_llama"])
    result["checks"] = verdicts(result["models"])
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["load_average_end"] = round(os.getloadavg()[0], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print("\n" + json.dumps(result["checks"], indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
