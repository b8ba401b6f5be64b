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

Results: appended to benchmarks/results/quant_bench.json (medtune.benchmarking's schema): one row
per model, type and imatrix variant (size_bytes, bits_per_weight, perplexity, mean_kl, p99_kl,
top1_agreement), each model's corpus, imatrix and adapter_top1_vs_merged beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from medtune import llamacpp
from medtune.benchmarking import append_run, print_table
from medtune.config import load_config
from medtune.export import export_gguf
from medtune.pipeline import run_pipeline
from medtune.rundir import RunDir
from medtune.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
BENCHMARK = "quant_bench"
TYPES = ["Q8_0", "Q5_K_M", "Q4_K_M", "IQ4_XS", "Q3_K_M", "IQ3_M", "Q2_K"]
FIGURES = ("size_bytes", "bits_per_weight", "perplexity", "mean_kl", "p99_kl", "top1_agreement")
TINY_SHAPE = {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 6, "num_attention_heads": 4,
              "num_key_value_heads": 2}


def export_all_types(config, label: str) -> dict:
    """Run the export stage with every type, the no-imatrix comparison and the adapter GGUF; the model's JSON entry."""
    config.export.quant_types = TYPES
    config.export.imatrix = "auto"
    config.export.compare_without_imatrix = True
    config.export.adapter_gguf = True
    config.export.max_mean_kl = {}
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    result = export_gguf(config, RunDir.of(config))
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
    demo = RunDir(demo_run)
    if not (demo.merged / "config.json").is_file():
        raise SystemExit(f"{demo_run} has no merged model: run `medtune run configs/demo.yaml` first")
    config = load_config(demo.config_file, [f"output_dir={scratch}"])
    target = RunDir.of(config)
    for part in ("data", "adapter", "merged"):
        shutil.copytree(getattr(demo, part), getattr(target, part))
    entry = export_all_types(config, "demo run (SmolLM2-135M-Instruct from the embedded Q4_1 GGUF, LoRA)")
    train = demo.stage_entry("train")
    entry["run"] = {"train_steps": train.get("steps") or train.get("global_step"), "config": str(demo.config_file)}
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


def type_rows(name: str, entry: dict) -> list[dict]:
    """One row per type and imatrix variant of one model's entry."""
    return [{"model": name, "type": type_name, "imatrix": key, **row}
            for type_name, pair in entry["types"].items() for key, row in pair.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-run", type=Path, default=REPO / "runs" / "demo")
    parser.add_argument("--pubmedqa", type=Path, default=REPO.parent / "shared" / "data" / "pubmedqa")
    parser.add_argument("--pretrain-steps", type=int, default=80)
    parser.add_argument("--only", choices=["demo", "tiny"], help="measure one model only")
    parser.add_argument("--results-dir", type=Path, help="where quant_bench.json is (default: benchmarks/results)")
    args = parser.parse_args()

    models: dict = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medtune-quant-bench-") as scratch:
        if args.only in (None, "demo"):
            models["demo"] = demo_entry(args.demo_run, Path(scratch))
        if args.only in (None, "tiny"):
            models["tiny_bf16_llama"] = tiny_entry(Path(scratch), args.pubmedqa, args.pretrain_steps)
    rows = [row for name, entry in models.items() for row in type_rows(name, entry)]
    for name, entry in models.items():
        print_table([r for r in rows if r["model"] == name], ["type", "imatrix", *FIGURES],
                    title=f"{name}: {entry['corpus']}, {entry['positions']} positions (ctx {entry['ctx']}); adapter GGUF "
                          f"top-1 vs merged F16 {entry['adapter_top1_vs_merged']:.2%}")
    checks = verdicts(models)
    append_run(
        BENCHMARK, rows, results_dir=args.results_dir,
        what="each quant type with and without an importance matrix (computed on the run's train split) vs the 16-bit "
             "GGUF on the run's held-out val split, by llama.cpp's llama-perplexity, through medtune's export stage",
        llama_cpp=llamacpp.runtime_description(), seconds=round(time.perf_counter() - started, 1), checks=checks,
        models={name: {k: v for k, v in entry.items() if k != "types"} for name, entry in models.items()},
    )
    print("\n" + json.dumps(checks, indent=2))


if __name__ == "__main__":
    main()
