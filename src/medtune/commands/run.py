"""Run the whole pipeline (prepare, train, merge, export, eval) and write MODEL_CARD.md.

Stages whose inputs are unchanged and whose outputs verify are skipped; an interrupted run
continues where it stopped (training from its last checkpoint)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from medtune.commands.common import ConfigArg, SetOption, load_run_config

NAME = "run"


def command(
    config: ConfigArg,
    overrides: SetOption = None,
    force: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Redo this stage and every stage after it (prepare, train, merge, export, eval)."),
    ] = None,
    until: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Stop after this stage."),
    ] = None,
) -> None:
    from medtune.pipeline import run_pipeline
    from medtune.ui import console, print_summary

    run_config = load_run_config(config, overrides)
    console.print(f"[bold]medtune run[/bold] {config} -> {run_config.run_dir}")

    def show(stage: str, message: str) -> None:
        console.print(f"[cyan]{stage:>8}[/cyan]  {message}")

    outcomes = run_pipeline(run_config, force=force, until=until, on_event=show)
    rows = [(o.name, o.action, f"{o.seconds:.1f}") for o in outcomes]
    print_summary(f"run {run_config.name}", rows, ("stage", "action", "seconds"))
    results = run_config.run_dir / "eval" / "results.json"
    if any(o.name == "eval" for o in outcomes) and results.is_file():
        import json

        from medtune.eval.stage import SUMMARY_COLUMNS, summary_rows

        print_summary("eval", list(summary_rows(json.loads(results.read_text())["results"])), SUMMARY_COLUMNS)
    card = run_config.run_dir / "MODEL_CARD.md"
    if card.is_file():
        console.print(f"model card: {card}")
    page = run_config.run_dir / "report.html"
    if until is None and page.is_file():
        console.print(f"report: {page}")
