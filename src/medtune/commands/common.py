"""Arguments shared by the commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medtune.config import RunConfig, load_config

ConfigArg = Annotated[Path, typer.Argument(help="Run config YAML (see configs/).", show_default=False)]
SetOption = Annotated[
    Optional[list[str]],  # noqa: UP045 - typer needs Optional on Python 3.10
    typer.Option(
        "--set",
        "-s",
        help="Override a config field, e.g. --set train.learning_rate=1e-4 (repeatable).",
        show_default=False,
    ),
]


def load_run_config(config: Path, overrides: list[str] | None) -> RunConfig:
    return load_config(config, overrides or [])
