"""Arguments shared by the commands, and options generated from the config's own fields."""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

import typer
from pydantic import BaseModel

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


def options_from(section: type[BaseModel], names: Sequence[str]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command one `--option` per named field of a config section: its type, default and help
    are the field's own, so a command never re-declares them. The command receives them together as
    `settings: dict` (only the named fields), ready for `section(**settings)`."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command)
        own = [p for p in signature.parameters.values() if p.name != "settings"]
        added = [_field_parameter(section, name) for name in names]

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            settings = {name: kwargs.pop(name) for name in names}
            return command(*args, settings=settings, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=[*own, *added])  # type: ignore[attr-defined]
        return wrapper

    return decorate


def _field_parameter(section: type[BaseModel], name: str) -> inspect.Parameter:
    field = section.model_fields[name]
    annotation, choices = _cli_type(field.annotation)
    help_text = field.description or ""
    if choices:
        help_text += f" One of: {', '.join(map(str, choices))}."
    option = typer.Option(f"--{name.replace('_', '-')}", help=help_text)
    default = field.get_default(call_default_factory=True)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[annotation, option])


def _cli_type(annotation: Any) -> tuple[Any, tuple[Any, ...]]:
    """A type typer can parse for a field's annotation (Literal -> its values' type, X | None -> Optional[X])."""
    origin = get_origin(annotation)
    if origin is Literal:
        values = get_args(annotation)
        return type(values[0]), values
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        inner, choices = _cli_type(members[0])
        return Optional[inner], choices  # noqa: UP045 - typer needs Optional on Python 3.10
    return annotation, ()
