"""Convert the merged model to GGUF with llama.cpp, quantize it, verify every file, write an Ollama Modelfile.

Writes runs/<name>/gguf/<name>-F16.gguf (or BF16) and one file per export.quant_types entry (default
Q4_K_M, Q5_K_M, Q8_0; any type llama.cpp knows), all made from the 16-bit file with the pinned
llama.cpp (set it up once with `bash scripts/setup-llama-cpp.sh`). Each file is loaded in the
llama.cpp runtime: the 16-bit file must agree with the merged model's next-token predictions,
quants report top-1 agreement and KL divergence against it, and every file answers the seed test
question greedily and must stop by itself (EOS). The quants are made with an importance matrix from
the run's train split (export.imatrix) and measured on its held-out val split with llama.cpp's
llama-perplexity (perplexity, mean and p99 KL, top-1), with and without the imatrix; a quant
above its bar (export.max_mean_kl) fails the stage."""

from __future__ import annotations

from medtune.commands.common import ConfigArg, SetOption, load_run_config
from medtune.rundir import RunDir
from medtune.ui import console, print_summary


def command(config: ConfigArg, overrides: SetOption = None) -> None:
    # The pipeline imports every stage (torch, transformers, llama.cpp): loaded when the command
    # runs, so that `medtune --help` answers at once.
    from medtune.pipeline import run_stage

    run_config = load_run_config(config, overrides)
    console.print(f"[bold]medtune export[/bold] {config} -> {RunDir.of(run_config).gguf}")
    figures = run_stage(run_config, "export").figures
    print_export_table(figures)


def print_export_table(figures: dict) -> None:
    """The per-file verification table and a short metadata summary."""
    rows = []
    for item in figures["files"]:
        kl = "-" if item["mean_kl"] is None else f"{item['mean_kl']:.3g}"
        stop = f"EOS after {item['answer_tokens']}" if item["stopped_on_eos"] else f"no EOS in {item['answer_tokens']}"
        rows.append(
            (item["type"], f"{item['size_bytes'] / 2**20:.1f} MiB", f"{item['bits_per_weight']:.2f}",
             f"{item['top1_agreement']:.2%} vs {item['versus']}", kl, stop)
        )
    print_summary(
        f"GGUF files in {figures['gguf_dir']} ({figures['prompts']} prompts, {figures['positions']} positions)",
        rows, ("type", "size", "bits/weight", "top-1 agreement", "mean KL vs 16-bit", "test answer"),
    )
    quality = figures.get("quality")
    if quality and quality.get("rows"):
        print_summary(
            f"quality on {quality['corpus']} ({quality['positions']} positions, llama-perplexity)",
            [(r["type"], "-" if r["mean_kl"] is None else ("yes" if r["imatrix"] else "no") + ("" if r["shipped"] else " (not shipped)"),
              f"{r['size_bytes'] / 2**20:.1f} MiB", f"{r['bits_per_weight']:.2f}", f"{r['perplexity']:.3f}",
              "-" if r["mean_kl"] is None else f"{r['mean_kl']:.4f}", "-" if r["p99_kl"] is None else f"{r['p99_kl']:.3f}",
              "-" if r["top1_agreement"] is None else f"{r['top1_agreement']:.2%}") for r in quality["rows"]],
            ("type", "imatrix", "size", "bits/weight", "perplexity", "mean KL", "p99 KL", "top-1"),
        )
    meta = figures["metadata"]
    print_summary(
        "metadata",
        [
            ("name / license", f"{meta['name']} / {meta['license'] or 'unknown'}"),
            ("EOS", f"{meta['end_of_turn']} (id {meta['eos_token_id']})"),
            ("chat template", "embedded, identical to the merged model's" if meta["chat_template_matches"] else "MISSING"),
            ("chat prompt via llama.cpp", f"same tokens as transformers, {meta['leading_bos']} leading BOS"),
            ("Ollama Modelfile", f"{figures['modelfile'] or '-'}: TEMPLATE {figures['modelfile_template']}"),
            *([("LoRA adapter GGUF", f"{figures['adapter']['folder']}{figures['adapter']['adapter_file']}: top-1 "
                f"{figures['adapter']['top1_vs_merged']:.2%} vs the merged file")] if figures.get("adapter") else []),
            ("seconds", figures["seconds"]),
        ],
    )
    for note in figures.get("notes", []):
        console.print(f"[yellow]note[/yellow]: {note}")
    first = figures["files"][0]
    console.print(f"{first['type']} answer to the test question: {first['answer'][:300]}", highlight=False)
