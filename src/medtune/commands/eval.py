"""Measure models on medical benchmarks (PubMedQA, MedQA, MedMCQA, MMLU medical).

Two forms:
  medtune eval CONFIG                 every artifact of a run named in eval.artifacts -> runs/<name>/eval/
  medtune eval --model PATH_OR_ID --benchmark pubmedqa --path ../shared/data/pubmedqa [--mode loglik]
                                      any model folder, hub id, adapter folder or .gguf file
Both write results.json, report.md and accuracy.png with accuracy, 95% bootstrap CI, parse
failures and time per artifact, benchmark and mode."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from medtune.commands.common import SetOption

NAME = "eval"


def command(
    config: Annotated[
        Optional[Path],  # noqa: UP045 - typer needs Optional on Python 3.10
        typer.Argument(help="Run config YAML; evaluates the run's artifacts (omit when using --model).", show_default=False),
    ] = None,
    overrides: SetOption = None,
    model: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Evaluate this model instead of a run: hub id, HF folder, adapter folder, .gguf, or embedded:smollm2-135m-instruct."),
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
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (transformers backend).")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto (bf16 on GPU and on CPUs with bf16 instructions, else fp32), fp32, bf16 or fp16.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Prompts per forward pass (transformers backend).")] = 8,
    max_new_tokens: Annotated[int, typer.Option(help="Generation budget in cot mode.")] = 512,
    prompt_style: Annotated[str, typer.Option(help="chat (default) or lm_eval: lm-evaluation-harness's prompt and scoring (loglik).")] = "chat",
    calibrate: Annotated[bool, typer.Option(help="Also report contextually calibrated loglik rows (mode loglik_calibrated).")] = False,
) -> None:
    from medtune.errors import ConfigError
    from medtune.ui import console, print_summary

    if (config is None) == (model is None):
        raise ConfigError("give either a run config (medtune eval CONFIG) or --model PATH_OR_ID, not both / neither")
    if config is not None:
        from medtune.commands.common import load_run_config
        from medtune.eval.report import RESULTS
        from medtune.pipeline import run_stage

        run_config = load_run_config(config, overrides)
        console.print(f"[bold]medtune eval[/bold] {config} -> {run_config.run_dir / 'eval'}")
        run_stage(run_config, "eval")
        import json

        rows = json.loads((run_config.run_dir / "eval" / RESULTS).read_text())["results"]
        out_dir = run_config.run_dir / "eval"
    else:
        from pydantic import ValidationError

        from medtune.config import EvalConfig
        from medtune.eval.stage import evaluate_model

        specs = _specs(benchmark or [], path, limit)
        try:
            eval_cfg = EvalConfig(
                benchmarks=specs, modes=mode or ["loglik"], device=device, dtype=dtype, batch_size=batch_size,
                max_new_tokens=max_new_tokens, prompt_style=prompt_style, calibrate=calibrate,
            )
        except ValidationError as exc:
            problems = "; ".join(f"--{'-'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise ConfigError(problems.replace("_", "-")) from None
        out_dir = out or Path("runs") / f"eval-{_slug(model)}"
        console.print(f"[bold]medtune eval[/bold] {model} -> {out_dir}")
        result = evaluate_model(model, eval_cfg.benchmarks, eval_cfg, out_dir, on_event=console.print)
        rows = result.rows
    from medtune.eval.stage import SUMMARY_COLUMNS, summary_rows

    print_summary("eval", list(summary_rows(rows)), SUMMARY_COLUMNS)
    console.print(f"report: {out_dir / 'report.md'}")


def _specs(benchmarks: list[str], path: str | None, limit: int | None):
    from pydantic import ValidationError

    from medtune.config import BenchmarkSpec
    from medtune.errors import ConfigError

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
