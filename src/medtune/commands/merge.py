"""Merge the trained LoRA adapter (runs/<name>/adapter) into a full-precision copy of the base model.

Writes runs/<name>/merged/ (safetensors, tokenizer + chat template, generation_config whose EOS ids
include the end-of-turn token) and proves the merge: the saved model is reloaded and its logits on
validation prompts are compared with base + adapter (fp32: 100% top-1 agreement and max |diff| <=
merge.max_abs_diff, else the stage fails and the previous merged/ folder is kept)."""

from __future__ import annotations

from medtune.commands.common import ConfigArg, SetOption, load_run_config
from medtune.rundir import RunDir
from medtune.ui import console, print_summary


def command(config: ConfigArg, overrides: SetOption = None) -> None:
    # The pipeline imports every stage (torch, transformers, peft): loaded when the command runs,
    # so that `medtune --help` answers at once.
    from medtune.pipeline import run_stage

    run_config = load_run_config(config, overrides)
    console.print(f"[bold]medtune merge[/bold] {config} -> {RunDir.of(run_config).merged}")
    figures = run_stage(run_config, "merge").figures
    rows = [
        ("merged model", figures["merged_dir"]),
        ("precision / device", f"{figures['dtype']} / {figures['device']}"),
        ("verified on", f"{figures['prompts']} prompts, {figures['positions']} positions ({figures['prompt_source']})"),
        ("top-1 agreement vs base + adapter", f"{figures['top1_agreement']:.2%}"),
        ("max |logit difference|", f"{figures['max_abs_diff']:.3g}"),
        ("end-of-turn token", figures["end_of_turn"]),
        ("generation EOS ids", ", ".join(str(i) for i in figures["eos_token_ids"])),
        ("seconds", figures["seconds"]),
    ]
    rows += [("note", note) for note in figures.get("notes", [])]
    print_summary("merge", rows, ("", ""))
