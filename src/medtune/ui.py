"""Terminal output shared by the commands: one console, summary tables, progress bars."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console(stderr=False)
err_console = Console(stderr=True)


def summary_table(title: str, rows: Iterable[Sequence[Any]], columns: Sequence[str] = ("", "")) -> Table:
    table = Table(title=title, show_header=any(columns), title_justify="left")
    for name in columns:
        table.add_column(str(name))
    for row in rows:
        table.add_row(*[_fmt(v) for v in row])
    return table


def print_summary(title: str, rows: Iterable[Sequence[Any]], columns: Sequence[str] = ("", "")) -> None:
    console.print(summary_table(title, rows, columns))


def progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
