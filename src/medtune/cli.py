"""The `medtune` command line: a thin layer that parses arguments, loads the config, calls one stage
function and prints its summary. COMMANDS is the command table: each entry a command function
(its module's docstring is its help)."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable

import typer
from rich.markup import escape

from medtune.commands import chat, info, merge, prepare, push, report, run, serve, train
from medtune.commands import eval as eval_command
from medtune.commands import export as export_command
from medtune.errors import MedtuneError
from medtune.quiet import quiet_known_noise
from medtune.ui import err_console

# Pipeline order first; `run` walks every stage.
COMMANDS: dict[str, Callable[..., None]] = {
    "run": run.command,
    "prepare": prepare.command,
    "train": train.command,
    "merge": merge.command,
    "export": export_command.command,
    "eval": eval_command.command,
    "chat": chat.command,
    "serve": serve.command,
    "report": report.command,
    "push": push.command,
    "info": info.command,
}

app = typer.Typer(
    name="medtune",
    help="Fine-tune a small chat LLM into a medical-reasoning model with LoRA, ship verified GGUF files, "
    "and measure every artifact on medical benchmarks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
for _name, _command in COMMANDS.items():
    app.command(_name, help=inspect.getmodule(_command).__doc__)(_command)


def main() -> None:
    """Console entry point: expected failures become one red line and exit code 2."""
    quiet_known_noise()
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
