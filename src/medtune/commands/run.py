"""Run the whole pipeline (prepare, train, rl when configured, merge, export, eval) and write MODEL_CARD.md and report.html.

Stages whose inputs are unchanged and whose outputs verify are skipped; an interrupted run
continues where it stopped (training from its last checkpoint)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from medtune.commands.common import ConfigArg, SetOption, load_run_config
from medtune.rundir import RunDir
from medtune.ui import console, print_summary


def command(
    config: ConfigArg,
    overrides: SetOption = None,
    force: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Redo this stage and every stage after it (prepare, train, rl, merge, export, eval)."),
    ] = None,
    until: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Stop after this stage."),
    ] = None,
) -> None:
    # The pipeline imports every stage (torch, transformers, peft, trl): loaded when a command runs,
    # so that `medtune --help` answers at once.
    from medtune.eval.rows import print_eval_summary, read_results
    from medtune.pipeline import run_pipeline

    run_config = load_run_config(config, overrides)
    run = RunDir.of(run_config)
    console.print(f"[bold]medtune run[/bold] {config} -> {run.root}")

    def show(stage: str, message: str) -> None:
        console.print(f"[cyan]{stage:>8}[/cyan]  {message}")

    outcomes = run_pipeline(run_config, force=force, until=until, on_event=show)
    rows = [(o.name, o.action, f"{o.seconds:.1f}") for o in outcomes]
    print_summary(f"run {run_config.name}", rows, ("stage", "action", "seconds"))
    evaluated = next((o for o in outcomes if o.name == "eval"), None)
    if evaluated is not None:
        # A skipped eval shows the results it verified (results.json), as a run that evaluated does.
        shown = evaluated.result if evaluated.result is not None else read_results(run.eval_results)
        if shown is not None:
            print_eval_summary(shown)
    if run.model_card.is_file():
        console.print(f"model card: {run.model_card}")
    if until is None and run.report_html.is_file():
        console.print(f"report: {run.report_html}")
