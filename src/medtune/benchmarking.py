"""What every script under benchmarks/ shares: the machine and versions it ran on, one results file
per benchmark that later runs append to, and the closing table.

Scripts import this (and other public medtune names) instead of each other, so a benchmark a user
reruns depends on the installed package only, never on `sys.path` tricks.

Results-file schema (benchmarks/results/<benchmark>.json):
    {"benchmark": NAME, "schema": 1, "runs": [RUN, ...]}
    RUN = {"date": ISO-8601, "command": the exact command line, "machine": {...}, "versions": {...},
           "rows": [ {...one measured row...}, ... ], **anything the benchmark adds (notes, settings)}
A new run is appended; earlier runs stay, so a later call never overwrites an earlier call's figures.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import shlex
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from medtune.artifacts import atomic_write_json

RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
SCHEMA = 1

_VERSIONED = ("medtune", "torch", "transformers", "peft", "trl", "datasets", "accelerate", "llama_cpp_python", "gguf")


def command_line() -> str:
    """The command that is running, as a user would retype it."""
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def machine() -> dict[str, Any]:
    """The machine a figure was measured on: CPU, cores, GPU, load average at the time."""
    info: dict[str, Any] = {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform()}
    gpu = gpu_name()
    if gpu:
        info["gpu"] = gpu
    try:
        info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def versions(extra: Iterable[str] = ()) -> dict[str, str]:
    """Installed versions of medtune's main libraries (and `extra` distributions), where installed."""
    found = {}
    for name in (*_VERSIONED, *extra):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    found["python"] = platform.python_version()
    return found


def results_path(benchmark: str, results_dir: Path | None = None) -> Path:
    return Path(results_dir or RESULTS_DIR) / f"{benchmark}.json"


def read_results(benchmark: str, results_dir: Path | None = None) -> dict[str, Any]:
    path = results_path(benchmark, results_dir)
    if not path.is_file():
        return {"benchmark": benchmark, "schema": SCHEMA, "runs": []}
    data = json.loads(path.read_text(encoding="utf-8"))
    if "runs" not in data:  # a results file from before this schema: kept whole as the first run
        data = {"benchmark": benchmark, "schema": SCHEMA, "runs": [{"legacy": data}]}
    return data


def append_run(
    benchmark: str,
    rows: Sequence[dict[str, Any]],
    *,
    results_dir: Path | None = None,
    command: str | None = None,
    extra_versions: Iterable[str] = (),
    **fields: Any,
) -> dict[str, Any]:
    """Append one run (its rows, the machine, versions, date, command) to the benchmark's results
    file, atomically, and return the run."""
    run = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command or command_line(),
        "machine": machine(),
        "versions": versions(extra_versions),
        **fields,
        "rows": list(rows),
    }
    data = read_results(benchmark, results_dir)
    data["runs"].append(run)
    atomic_write_json(results_path(benchmark, results_dir), data)
    return run


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A plain-text table (fixed-width, readable in a log or an 80-column terminal)."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join([line, rule, *body])


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, title: str | None = None) -> None:
    if title:
        print(f"\n{title}")
    print(format_table(rows, columns))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)


def _numeric(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True
