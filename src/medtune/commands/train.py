"""LoRA fine-tune the base model on the prepared data; writes runs/<name>/adapter/.

Checkpoints go to runs/<name>/checkpoints/ every train.save_steps; --resume continues from the
newest complete one. On a GPU: bf16, packed padding-free batches, varlen flash attention and
torch.compile by default. Several GPUs: the same command under a launcher, e.g.
`accelerate launch -m medtune.cli train CONFIG` or `torchrun --nproc-per-node 2 -m medtune.cli train CONFIG`."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from medtune.commands.common import ConfigArg, SetOption, load_run_config
from medtune.rundir import RunDir
from medtune.ui import console, print_summary


def command(
    config: ConfigArg,
    overrides: SetOption = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest complete checkpoint.")] = False,
) -> None:
    # The pipeline and the trainer import torch, transformers and peft: loaded when the command runs,
    # so that `medtune --help` answers at once.
    from medtune.pipeline import run_stage
    from medtune.train.trainer import train_adapter

    run_config = load_run_config(config, overrides)
    run = RunDir.of(run_config)
    main_process = int(os.environ.get("RANK", "0")) == 0
    if not main_process:
        # Other data-parallel processes train but leave the manifest and outputs to the main one.
        train_adapter(run_config, run, resume=resume)
        return
    console.print(f"[bold]medtune train[/bold] {config} -> {run.adapter}")
    figures = run_stage(run_config, "train", resume=resume).figures
    print_summary("train", summary_rows(figures), ("", ""))


def summary_rows(figures: dict) -> list[tuple[str, object]]:
    """Rows of the end-of-training table from the stage's recorded figures."""
    plan = ", ".join(
        f"{key.removeprefix('plan_')}={value}" for key, value in figures.items() if key.startswith("plan_")
    )
    rows = [
        ("optimizer steps", figures.get("steps")),
        ("time", f"{figures.get('train_seconds', 0):.1f} s"),
        ("tokens seen (real)", f"{figures.get('tokens_seen', 0):,}"),
        ("final train loss", _fmt(figures.get("train_loss"))),
        ("val loss (first -> last)", f"{_fmt(figures.get('first_val_loss'))} -> {_fmt(figures.get('val_loss'))}"),
        ("test question answer", figures.get("test_answer_choice") or "-"),
        ("setup", plan),
    ]
    if figures.get("resumed_from_step"):
        rows.insert(0, ("resumed from step", figures["resumed_from_step"]))
    return rows


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"
