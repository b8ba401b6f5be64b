"""The pipeline: prepare -> train -> merge -> export -> eval, resumable and self-describing.

Each stage's manifest entry holds a fingerprint of its inputs: the config sections it reads, the
run-level fields, and the digests of the earlier stages' outputs. A rerun skips a stage whose
fingerprint is unchanged and whose recorded outputs still verify (size + sha256), so changing
e.g. `export.quant_types` redoes export and eval only.

A stage that is interrupted (Ctrl-C, kill -9) leaves only temporary folders (`*.tmp-PID`), which
the next run deletes, and a manifest entry with status "running". Training resumes from its last
checkpoint, and evaluation keeps the benchmark results it had finished, when the interrupted
attempt had the same fingerprint.
"""

from __future__ import annotations

import importlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtune.artifacts import (
    describe_outputs,
    fingerprint,
    read_manifest,
    record_stage,
    remove_stale_temporaries,
    sha256_file,
)
from medtune.config import RunConfig, save_resolved_config
from medtune.errors import ConfigError, MedtuneError


@dataclass(frozen=True)
class Stage:
    name: str
    output: str  # folder under the run directory that the stage writes
    sections: tuple[str, ...]  # config sections it reads
    after: tuple[str, ...]  # earlier stages whose outputs it reads
    target: str  # "module:function", called with the RunConfig (and resume= when it has scratch)
    scratch: str | None = None  # folder where an interrupted attempt keeps progress a rerun may resume


CHECKPOINTS = "checkpoints"  # train: Trainer checkpoints
EVAL_PARTIAL = "eval-partial"  # eval: one file per finished artifact (all its benchmarks and modes)

STAGES: tuple[Stage, ...] = (
    Stage("prepare", "data", ("data", "model"), (), "medtune.data.prepare:prepare_data"),
    Stage("train", "adapter", ("model", "lora", "train"), ("prepare",), "medtune.train.trainer:train_adapter", CHECKPOINTS),
    Stage("merge", "merged", ("model", "merge"), ("train",), "medtune.merge:merge_adapter"),
    # export reads data/ too: the train split calibrates the imatrix, the val split is the quality corpus.
    Stage("export", "gguf", ("model", "export"), ("prepare", "merge"), "medtune.export:export_gguf"),
    Stage("eval", "eval", ("model", "eval"), ("prepare", "train", "merge", "export"), "medtune.eval.stage:evaluate",
          EVAL_PARTIAL),
)
STAGE_NAMES = tuple(stage.name for stage in STAGES)
RESUMING = {"train": "resuming from the last checkpoint", "eval": "resuming: keeping the finished benchmark results"}


@dataclass
class StageOutcome:
    name: str
    action: str  # "ran", "skipped", "resumed"
    seconds: float
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)


def stage_by_name(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise ConfigError(f"unknown stage {name!r}; stages are: {', '.join(STAGE_NAMES)}")


# Settings that change how fast a stage runs, never what it produces: editing them redoes nothing.
SPEED_ONLY_FIELDS = {"export": {"n_threads"}, "eval": {"n_threads", "parallel_gguf"}}


def _result_fields(config: RunConfig, section: str) -> dict[str, Any]:
    speed_only = SPEED_ONLY_FIELDS.get(section, set())
    return {k: v for k, v in config.section_dump(section).items() if k not in speed_only}


def stage_fingerprint(config: RunConfig, stage: Stage, manifest: dict[str, Any]) -> str:
    """Hash of everything the stage's result depends on."""
    inputs: dict[str, Any] = {}
    for dependency in stage.after:
        entry = manifest.get("stages", {}).get(dependency, {})
        inputs[dependency] = entry.get("outputs_digest")
    if stage.name == "prepare" and config.data.files:
        from medtune.data.loading import source_digest

        # Local data files are inputs too: editing one redoes prepare (hub data is identified by id).
        inputs["files"] = [record["sha256"] for record in source_digest(config.data)]
    if stage.name == "export" and config.export.imatrix not in ("auto", "off"):
        inputs["imatrix"] = sha256_file(Path(config.export.imatrix).expanduser())  # a given imatrix file is an input
    return fingerprint(
        {
            "stage": stage.name,
            "run": {"name": config.name, "seed": config.seed},
            "sections": {section: _result_fields(config, section) for section in stage.sections},
            "inputs": inputs,
        }
    )


def outputs_verify(run_dir: Path, entry: dict[str, Any]) -> tuple[bool, str]:
    """Check that every file recorded for a stage still exists with its size and sha256."""
    outputs = entry.get("outputs") or []
    if not outputs:
        return False, "no outputs recorded"
    for record in outputs:
        path = run_dir / record["path"]
        if not path.is_file():
            return False, f"{record['path']} is missing"
        if path.stat().st_size != record["size"]:
            return False, f"{record['path']} changed size"
        if sha256_file(path) != record["sha256"]:
            return False, f"{record['path']} changed content"
    return True, "outputs verified"


def _call(stage: Stage) -> Callable[..., Any]:
    module_name, _, function_name = stage.target.partition(":")
    return getattr(importlib.import_module(module_name), function_name)


def run_stage(config: RunConfig, name: str, *, resume: bool = False) -> StageOutcome:
    """Run one stage unconditionally and record it (used by the single-stage commands too)."""
    stage = stage_by_name(name)
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    save_resolved_config(config, run_dir / "config.yaml")
    remove_stale_temporaries(run_dir)
    _require_inputs(run_dir, stage)
    manifest = read_manifest(run_dir)
    current = stage_fingerprint(config, stage, manifest)
    record_stage(run_dir, stage.name, {"status": "running", "fingerprint": current})
    started = time.perf_counter()
    kwargs = {"resume": resume} if stage.scratch else {}
    result = _call(stage)(config, **kwargs)
    seconds = time.perf_counter() - started
    outputs = describe_outputs([run_dir / stage.output], run_dir)
    own = read_manifest(run_dir).get("stages", {}).get(stage.name, {})
    figures = {k: v for k, v in own.items() if k not in {"status", "fingerprint", "outputs", "recorded_at"}}
    figures.update(_figures_from_result(result))
    record_stage(
        run_dir,
        stage.name,
        {
            **figures,
            "status": "done",
            "fingerprint": current,
            "outputs": outputs,
            "outputs_digest": fingerprint(outputs),
            "seconds": round(seconds, 2),
        },
    )
    # Later stages were built from the old outputs: their fingerprints no longer match, so a
    # `medtune run` redoes them. Nothing to clean up here.
    return StageOutcome(stage.name, "resumed" if resume else "ran", seconds, "", figures)


def record_stage_result(config: RunConfig, name: str, figures: dict[str, Any]) -> None:
    """A stage function's own manifest entry: its figures.

    Under `run_stage` (entry status "running") the figures join the entry that `run_stage`
    completes. When the stage function is called directly, the entry is completed here the same
    way (pipeline fingerprint, outputs with sha256), so a later `medtune run` can skip it.
    """
    stage = stage_by_name(name)
    run_dir = config.run_dir
    manifest = read_manifest(run_dir)
    entry = manifest.get("stages", {}).get(name, {})
    if entry.get("status") == "running":
        record_stage(run_dir, name, {**entry, **figures})
        return
    outputs = describe_outputs([run_dir / stage.output], run_dir)
    record_stage(
        run_dir,
        name,
        {
            **figures,
            "status": "done",
            "fingerprint": stage_fingerprint(config, stage, manifest),
            "outputs": outputs,
            "outputs_digest": fingerprint(outputs),
        },
    )


def _figures_from_result(result: Any) -> dict[str, Any]:
    figures = getattr(result, "figures", None)
    if callable(figures):
        figures = figures()
    return dict(figures) if isinstance(figures, dict) else {}


def _require_inputs(run_dir: Path, stage: Stage) -> None:
    if stage.name == "eval":
        return  # eval measures whichever requested artifacts exist (the base model needs none)
    manifest = read_manifest(run_dir).get("stages", {})
    for dependency in stage.after:
        if manifest.get(dependency, {}).get("status") != "done":
            raise MedtuneError(
                f"stage '{stage.name}' needs the output of '{dependency}', which has not completed in {run_dir}; "
                f"run `medtune {dependency}` (or `medtune run`) first"
            )


def run_pipeline(
    config: RunConfig,
    *,
    force: str | None = None,
    until: str | None = None,
    on_event: Callable[[str, str], None] = lambda stage, message: None,
) -> list[StageOutcome]:
    """Walk the stages in order, skipping those whose fingerprint and outputs are unchanged.

    force: redo this stage and every stage after it. until: stop after this stage.
    Raises MedtuneError naming the failing stage; earlier good artifacts stay untouched.
    """
    if force is not None:
        stage_by_name(force)
    if until is not None:
        stage_by_name(until)
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    save_resolved_config(config, run_dir / "config.yaml")
    removed = remove_stale_temporaries(run_dir)
    if removed:
        on_event("run", f"removed {len(removed)} unfinished temporary artifact(s) from an interrupted run")
    outcomes: list[StageOutcome] = []
    forcing = False
    for stage in STAGES:
        forcing = forcing or stage.name == force
        manifest = read_manifest(run_dir)
        entry = manifest.get("stages", {}).get(stage.name, {})
        current = stage_fingerprint(config, stage, manifest)
        if not forcing and entry.get("status") == "done" and entry.get("fingerprint") == current:
            ok, why = outputs_verify(run_dir, entry)
            if ok:
                outcomes.append(StageOutcome(stage.name, "skipped", 0.0, "unchanged, outputs verified", entry))
                on_event(stage.name, "skipped: inputs unchanged and outputs verified")
                if stage.name == until:
                    break
                continue
            on_event(stage.name, f"redoing: {why}")
        resume = False
        if stage.scratch:
            scratch = run_dir / stage.scratch
            interrupted_same = entry.get("status") == "running" and entry.get("fingerprint") == current
            resume = interrupted_same and not forcing and scratch.is_dir()
            if not resume and scratch.exists():
                shutil.rmtree(scratch)  # progress of another recipe, data or artifact
        on_event(stage.name, RESUMING.get(stage.name, "resuming") if resume else "running")
        try:
            outcome = run_stage(config, stage.name, resume=resume)
        except MedtuneError as exc:
            raise MedtuneError(f"stage '{stage.name}' failed: {exc}") from exc
        outcomes.append(outcome)
        if stage.name == until:
            break
    if until is None:
        from medtune.model_card import write_model_card
        from medtune.report import write_html_report

        write_model_card(config)
        write_html_report(config.run_dir)
    return outcomes
