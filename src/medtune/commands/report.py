"""Write runs/<name>/report.html: one self-contained page with the run's loss curves, eval tables with
confidence intervals, paired comparisons, GGUF checks, per-benchmark accuracy and example answers.

Reads only what the run wrote (manifest, train log, eval results and predictions); runs nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medtune.report import write_html_report
from medtune.rundir import RunDir
from medtune.ui import console


def command(
    run: Annotated[Path, typer.Argument(help="A run directory (runs/<name>).", show_default=False)],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Where to write the page (default: RUN/report.html).", show_default=False)] = None,  # noqa: UP045
    examples: Annotated[int, typer.Option(min=0, help="Example answers shown per artifact.")] = 3,
) -> None:
    path = write_html_report(RunDir(run), output=output, examples=examples)
    console.print(f"report: {path} ({path.stat().st_size / 1024:.0f} KiB)", highlight=False)
