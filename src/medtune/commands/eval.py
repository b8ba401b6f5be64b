"""Measure models on medical benchmarks (PubMedQA, MedQA, MedMCQA, MMLU medical).

Two forms:
  medtune eval CONFIG                 every artifact of a run named in eval.artifacts -> runs/<name>/eval/
  medtune eval --model PATH_OR_ID --benchmark pubmedqa --path ../shared/data/pubmedqa [--mode loglik]
                                      any model folder, hub id, adapter folder, .gguf file or run folder
Both write results.json, report.md and accuracy.png with accuracy, 95% bootstrap CI, parse
failures, the majority/chance line and time per artifact, benchmark and mode."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from pydantic import ValidationError

from medtune.commands.common import SetOption, load_run_config, options_from
from medtune.config import BenchmarkSpec, EvalConfig
from medtune.errors import ConfigError
from medtune.eval.rows import print_eval_summary
from medtune.eval.stage import EvalResult, evaluate_model
from medtune.rundir import EvalFiles, RunDir
from medtune.ui import console

# EvalConfig fields `--model` takes as options (their help and defaults are the config's own).
MODEL_OPTIONS = ("device", "dtype", "batch_size", "max_new_tokens", "prompt_style", "calibrate")


@options_from(EvalConfig, MODEL_OPTIONS)
def command(
    config: Annotated[
        Optional[Path],  # noqa: UP045 - typer needs Optional on Python 3.10
        typer.Argument(help="Run config YAML; evaluates the run's artifacts (omit when using --model).", show_default=False),
    ] = None,
    overrides: SetOption = None,
    model: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Evaluate this model instead of a run: hub id, HF folder, adapter folder, .gguf, run folder, "
                     "or embedded:smollm2-135m-instruct."),
    ] = None,
    benchmark: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(help="Benchmark name, or NAME=PATH for local files (repeatable): pubmedqa, medqa, medmcqa, mmlu_medical, mmlu_<subject>."),
    ] = None,
    path: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Local data in the benchmark's original format (with a single --benchmark)."),
    ] = None,
    mode: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(help="loglik (default) or cot; repeatable."),
    ] = None,
    limit: Annotated[Optional[int], typer.Option(help="Evaluate a fixed seeded subset of N items.")] = None,  # noqa: UP045
    out: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Output folder with --model (default: runs/eval-<model name>)."),
    ] = None,
    *,
    settings: dict[str, Any],
) -> None:
    if (config is None) == (model is None):
        raise ConfigError("give either a run config (medtune eval CONFIG) or --model PATH_OR_ID, not both / neither")
    if config is not None:
        result = _evaluate_run(config, overrides)
    else:
        result = _evaluate_model(model, _specs(benchmark or [], path, limit), mode or ["loglik"], settings, out)
    print_eval_summary(result)
    console.print(f"report: {EvalFiles(result.out_dir).report}")


def _evaluate_run(config: Path, overrides: list[str] | None) -> EvalResult:
    # The pipeline imports every stage (torch, transformers, peft, trl): loaded when the command runs,
    # so that `medtune --help` answers at once.
    from medtune.pipeline import run_stage

    run_config = load_run_config(config, overrides)
    console.print(f"[bold]medtune eval[/bold] {config} -> {RunDir.of(run_config).eval}")
    return run_stage(run_config, "eval").result


def _evaluate_model(model: str, specs: list[BenchmarkSpec], modes: list[str], settings: dict[str, Any],
                    out: Path | None) -> EvalResult:
    try:
        eval_cfg = EvalConfig(benchmarks=specs, modes=modes, **settings)
    except ValidationError as exc:
        problems = "; ".join(f"--{'-'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(problems.replace("_", "-")) from None
    out_dir = out or Path("runs") / f"eval-{_slug(model)}"
    console.print(f"[bold]medtune eval[/bold] {model} -> {out_dir}")
    return evaluate_model(model, eval_cfg.benchmarks, eval_cfg, out_dir, on_event=console.print)


def _specs(benchmarks: list[str], path: str | None, limit: int | None) -> list[BenchmarkSpec]:
    if not benchmarks:
        raise ConfigError("--model needs at least one --benchmark (e.g. --benchmark pubmedqa --path ../shared/data/pubmedqa)")
    if path is not None and len(benchmarks) > 1:
        raise ConfigError("--path goes with a single --benchmark; for several use --benchmark NAME=PATH")
    specs = []
    for entry in benchmarks:
        name, _, local = entry.partition("=")
        try:
            specs.append(BenchmarkSpec(name=name, path=local or path, limit=limit))
        except ValidationError as exc:
            raise ConfigError(f"--benchmark {entry}: {exc.errors()[0]['msg']}") from None
    return specs


def _slug(model: str) -> str:
    stem = Path(model.rstrip("/")).name or model
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem.removesuffix(".gguf")).strip("-") or "model"
