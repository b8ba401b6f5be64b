"""The `medtune` command line: a thin layer that parses arguments, loads the config, calls one stage
function and prints its summary. Each command lives in `medtune.commands.<name>`."""

from __future__ import annotations

import importlib
import sys

import typer
from rich.markup import escape

from medtune.errors import MedtuneError
from medtune.ui import err_console

app = typer.Typer(
    name="medtune",
    help="Fine-tune a small chat LLM into a medical-reasoning model with LoRA, ship verified GGUF files, "
    "and measure every artifact on medical benchmarks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Pipeline order; `run` walks prepare..eval.
COMMANDS = ["run", "prepare", "train", "merge", "export", "eval", "chat", "serve", "report", "info"]

for _name in COMMANDS:
    _module = importlib.import_module(f"medtune.commands.{_name}")
    app.command(_module.NAME, help=_module.__doc__)(_module.command)


def main() -> None:
    """Console entry point: expected failures become one red line and exit code 2."""
    try:
        app()
    except MedtuneError as exc:
        # escape: a message quoting YAML or JSON ("[a.jsonl") must not be read as rich markup.
        err_console.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/yellow]: rerun the same command to continue where it stopped")
        sys.exit(130)


if __name__ == "__main__":
    main()
