"""Turn the configured dataset into tokenized train/val chats (assistant-only labels) under runs/<name>/data/.

Reads local .jsonl/.json/.parquet files or a Hugging Face dataset, normalises each record
format to chat messages, validates every record (bad ones are counted by reason, or stop the run
with file:line under data.invalid=error), renders the model's chat template, tokenizes, splits,
and writes report.json. Reuses the previous output when nothing that affects it changed.

See every drop reason on the shipped file of broken records:
  medtune prepare configs/demo.yaml --set name=broken --set data.files=\\[builtin:broken-records] --set data.format=auto"""

from __future__ import annotations

from typing import Annotated

import typer

from rich.markup import escape

from medtune.commands.common import ConfigArg, SetOption, load_run_config
from medtune.rundir import RunDir
from medtune.ui import console, print_summary


def command(
    config: ConfigArg,
    overrides: SetOption = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if the inputs are unchanged.")] = False,
) -> None:
    # The pipeline imports every stage (torch, transformers): loaded when the command runs, so that
    # `medtune --help` answers at once.
    from medtune.pipeline import run_or_skip

    run_config = load_run_config(config, overrides)
    run = RunDir.of(run_config)
    console.print(f"[bold]medtune prepare[/bold] {config} -> {run.data}")
    outcome = run_or_skip(run_config, "prepare", force=force)
    if outcome.action == "skipped":
        console.print("inputs unchanged since the last prepare: reusing the existing data (--force rebuilds)")
    print_report(run)


def print_report(run: RunDir) -> None:
    """Summary tables of a run's data report: kept/dropped by reason (with examples) and token lengths."""
    from medtune.data.prepare import read_report  # pulls datasets: only once there is a report to show

    report = read_report(run)
    rows = [("records read", report["records_read"]), ("kept", report["kept"])]
    rows += [("  train / val", f"{report['train']} / {report['val']}")]
    for reason, count in report["dropped"].items():
        rows.append((f"dropped: {reason}", count))
    rows.append((f"truncated to {report['max_length']}", f"{report['truncated']} ({report['truncated_fraction']:.1%})"))
    print_summary("data", rows, ("", "records"))
    if report.get("decontamination"):
        checked = report["decontamination"]
        rows = [
            (name, info["items"], info["source"], checked["dropped"].get(name, 0))
            for name, info in checked["benchmarks"].items()
        ]
        print_summary(
            f"decontamination ({checked['ngram']}-gram overlap >= {checked['threshold']:.0%}, or the whole question)",
            rows,
            ("benchmark", "items", "from", "training records dropped"),
        )
    for reason, examples in report["examples"].items():
        if examples:
            console.print(f"[yellow]{reason}[/yellow] ({escape(report['reasons'].get(reason, ''))}), e.g.:")
            for example in examples:
                console.print(f"  {escape(example)}", highlight=False, soft_wrap=True)
    tokens, before = report["token_lengths"], report["token_lengths_before_limit"]
    stats = ("p50", "p90", "p99", "max", "mean")
    print_summary(
        "tokens per example",
        [("kept", *(tokens[k] for k in stats)), ("before max_length", *(before[k] for k in stats))],
        ("", *stats),
    )
    console.print(
        f"labelled (reply + {report['chat_template_eot']}) tokens: {report['label_tokens']:,}; "
        f"pad token: {report['pad_token']}; took {report['seconds']} s"
    )
