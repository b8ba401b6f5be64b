"""Terminal output shared by the commands: one console, summary tables, progress bars."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.measure import Measurement
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


def stacked_table(title: str, rows: Iterable[Sequence[Any]], columns: Sequence[str]) -> Table:
    """The same rows as `summary_table`, one block per row (column name, value), for narrow terminals
    and pipes (80 columns), where a wide table would squeeze its headers to "accu…"."""
    table = Table(title=title, show_header=False, title_justify="left", show_lines=False)
    table.add_column("", style="bold", no_wrap=True)
    table.add_column("", overflow="fold")
    for row in rows:
        cells = [_fmt(v) for v in row]
        for name, value in zip(columns, cells):
            table.add_row(str(name), value)
        table.add_section()
    return table


def print_summary(title: str, rows: Iterable[Sequence[Any]], columns: Sequence[str] = ("", "")) -> None:
    """A summary table; stacked one row per block when it would not fit the terminal's width."""
    rows = [list(row) for row in rows]
    table = summary_table(title, rows, columns)
    natural = Measurement.get(console, console.options.update(max_width=10_000), table).maximum
    if any(columns) and len(columns) > 2 and natural > console.width:
        table = stacked_table(title, rows, columns)
    console.print(table)


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
