"""The pipeline: prepare -> train -> [rl] -> merge -> export -> eval, resumable and self-describing.

This module is the only caller of stage functions and the only writer of the run's manifest. A
stage is a plain function `stage(config, run, *, resume=False) -> result` (resume only for stages
with a scratch folder) that reads earlier stages' folders through `RunDir`, writes only its own
folder, and returns a typed result whose `figures()` the pipeline records. No stage imports this
module.

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

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from medtune.artifacts import (
    describe_outputs,
    fingerprint,
    read_manifest,
    record_stage,
    remove_stale_temporaries,
    sha256_file,
)
from medtune.config import RunConfig, save_resolved_config
from medtune.data.loading import source_digest
from medtune.data.prepare import prepare_data
from medtune.errors import ConfigError, MedtuneError
from medtune.eval.stage import evaluate
from medtune.export import export_gguf
from medtune.merge import merge_adapter
from medtune.model_card import write_model_card
from medtune.report import write_html_report
from medtune.rl.stage import rl_stage
from medtune.rundir import RunDir
from medtune.train.trainer import checkpoint_step, resume_message, train_adapter


class StageResult(Protocol):
    """What every stage function returns: its key figures, recorded in the manifest."""

    def figures(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[..., StageResult]  # stage(config, run_dir, [resume=...])
    sections: tuple[str, ...]  # config sections it reads
    after: tuple[str, ...]  # earlier stages whose outputs it reads
    needs_inputs: bool = True  # False: runs with whichever earlier outputs exist (eval's base model needs none)
    enabled: Callable[[RunConfig], bool] = lambda config: True
    resume_note: Callable[[RunDir], str] = lambda run: "resuming"  # what a resumed attempt continues from


STAGES: tuple[Stage, ...] = (
    Stage("prepare", prepare_data, ("data", "model"), ()),
    Stage("train", train_adapter, ("model", "lora", "train"), ("prepare",), 
          resume_note=lambda run: resume_message(checkpoint_step(run))),
    # On when the config has an `rl` section: GRPO continuing the SFT adapter; merge then takes its adapter.
    Stage("rl", rl_stage, ("model", "lora", "rl"), ("prepare", "train"), enabled=lambda config: config.rl is not None,
          resume_note=lambda run: resume_message(checkpoint_step(run, run.rl_checkpoints))),
    # merge folds in the RL adapter when the run has an rl stage (its section and output join merge's inputs).
    Stage("merge", merge_adapter, ("model", "merge", "rl"), ("train", "rl")),
    # export reads data/ too: the train split calibrates the imatrix, the val split is the quality corpus.
    Stage("export", export_gguf, ("model", "export"), ("prepare", "merge")),
    Stage("eval", evaluate, ("model", "eval"), ("prepare", "train", "merge", "export"), needs_inputs=False,
          resume_note=lambda run: "resuming: keeping the finished benchmark results"),
)
STAGE_NAMES = tuple(stage.name for stage in STAGES)

# Settings that change how fast a stage runs, never what it produces: editing them redoes nothing.
SPEED_ONLY_FIELDS = {"export": {"n_threads"}, "eval": {"n_threads", "parallel_gguf"}}
# Switchable features added after run folders existed: while switched off they change nothing, and are
# left out of the fingerprint so that older runs are not redone for a setting they never had.
ABSENT_WHILE_OFF = {"eval": {"guard"}, "rl": {"hold_out_of_sft", "val_samples"}}


@dataclass
class StageOutcome:
    name: str
    action: str  # "ran", "skipped", "resumed"
    seconds: float
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)
    result: Any = None  # the stage's typed result, when it ran


def stage_by_name(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise ConfigError(f"unknown stage {name!r}; stages are: {', '.join(STAGE_NAMES)}")


def active_stages(config: RunConfig) -> tuple[Stage, ...]:
    """The stages this config runs, in order (optional stages only when their section is set)."""
    return tuple(stage for stage in STAGES if stage.enabled(config))


def _switched_on(setting: Any) -> bool:
    """A switchable feature's state: a section with `enabled`, or a plain flag."""
    return bool(getattr(setting, "enabled", setting))


def _result_fields(config: RunConfig, section: str) -> dict[str, Any]:
    speed_only = SPEED_ONLY_FIELDS.get(section, set())
    off = {k for k in ABSENT_WHILE_OFF.get(section, set()) if not _switched_on(getattr(getattr(config, section), k))}
    return {k: v for k, v in config.section_dump(section).items() if k not in speed_only | off}


def stage_fingerprint(config: RunConfig, stage: Stage, manifest: dict[str, Any]) -> str:
    """Hash of everything the stage's result depends on."""
    inputs: dict[str, Any] = {}
    for dependency in _active_dependencies(config, stage):
        entry = manifest.get("stages", {}).get(dependency, {})
        inputs[dependency] = entry.get("outputs_digest")
    if stage.name == "prepare" and config.data.files:
        # Local data files are inputs too: editing one redoes prepare (hub data is identified by id).
        inputs["files"] = [record["sha256"] for record in source_digest(config.data)]
    if stage.name == "prepare" and config.rl is not None and config.rl.hold_out_of_sft:
        # RL's prompts are dropped from SFT's data: what picks them is an input of prepare.
        paths = [Path(entry).expanduser() for entry in config.rl.prompts]
        inputs["rl_held_out"] = {"prompts": config.rl.prompts, "val_size": config.rl.val_size, "limit": config.rl.limit,
                                 "files": [sha256_file(path) for path in paths if path.is_file()]}
    # An optional section that is not set (no `rl:`) is left out, so runs without it keep their fingerprints.
    sections = [section for section in stage.sections if getattr(config, section) is not None]
    if stage.name == "export" and config.export.imatrix not in ("auto", "off"):
        inputs["imatrix"] = sha256_file(Path(config.export.imatrix).expanduser())  # a given imatrix file is an input
    return fingerprint(
        {
            "stage": stage.name,
            "run": {"name": config.name, "seed": config.seed},
            "sections": {section: _result_fields(config, section) for section in sections},
            "inputs": inputs,
        }
    )


def _active_dependencies(config: RunConfig, stage: Stage) -> tuple[str, ...]:
    """The earlier stages `stage` reads that this config runs (an optional stage that is off is not an input)."""
    active = {s.name for s in active_stages(config)}
    return tuple(name for name in stage.after if name in active)


def outputs_verify(run: RunDir, entry: dict[str, Any]) -> tuple[bool, str]:
    """Check that every file recorded for a stage still exists with its size and sha256."""
    outputs = entry.get("outputs") or []
    if not outputs:
        return False, "no outputs recorded"
    for record in outputs:
        path = run.root / record["path"]
        if not path.is_file():
            return False, f"{record['path']} is missing"
        if path.stat().st_size != record["size"]:
            return False, f"{record['path']} changed size"
        if sha256_file(path) != record["sha256"]:
            return False, f"{record['path']} changed content"
    return True, "outputs verified"


def _finished(run: RunDir, entry: dict[str, Any], current: str) -> tuple[bool, str | None]:
    """Whether a stage's recorded attempt is done with the fingerprint `current` and its outputs verify:
    (True, None); (False, why) when it is done with these inputs but an output changed; else (False, None)."""
    if entry.get("status") != "done" or entry.get("fingerprint") != current:
        return False, None
    ok, why = outputs_verify(run, entry)
    return ok, None if ok else why


def is_current(config: RunConfig, name: str) -> tuple[bool, str | None]:
    """Whether stage `name` finished with today's inputs and its outputs verify (and which output
    changed, when that is why not)."""
    run = RunDir.of(config)
    manifest = read_manifest(run.root)
    entry = manifest.get("stages", {}).get(name, {})
    return _finished(run, entry, stage_fingerprint(config, stage_by_name(name), manifest))


def run_stage(config: RunConfig, name: str, *, resume: bool = False) -> StageOutcome:
    """Run one stage unconditionally and record it (the single-stage commands call this too)."""
    stage = stage_by_name(name)
    run = RunDir.of(config)
    _open_run(config, run)
    _require_inputs(config, run, stage)
    current = stage_fingerprint(config, stage, read_manifest(run.root))
    record_stage(run.root, stage.name, {"status": "running", "fingerprint": current})
    started = time.perf_counter()
    kwargs = {"resume": resume} if run.scratch_folder(stage.name) else {}
    try:
        result = stage.run(config, run, **kwargs)
    except MedtuneError as exc:
        failed = getattr(exc, "figures", None)  # a stage error that carries the figures that failed it
        if failed is not None:
            record_stage(run.root, stage.name, {"status": "failed", "fingerprint": current, "error": str(exc), **failed})
        raise
    seconds = time.perf_counter() - started
    outputs = describe_outputs([run.stage_folder(stage.name)], run.root)
    figures = dict(result.figures())
    record_stage(
        run.root,
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
    return StageOutcome(stage.name, "resumed" if resume else "ran", seconds, "", figures, result)


def run_or_skip(config: RunConfig, name: str, *, force: bool = False, resume: bool = False) -> StageOutcome:
    """One stage as `medtune <stage>` runs it: skipped when current (unless forced), else run."""
    if not force and not resume:
        current, _ = is_current(config, name)
        if current:
            entry = RunDir.of(config).stage_entry(name)
            return StageOutcome(name, "skipped", 0.0, "unchanged, outputs verified", entry)
    return run_stage(config, name, resume=resume)


def _open_run(config: RunConfig, run: RunDir) -> list[Path]:
    run.root.mkdir(parents=True, exist_ok=True)
    save_resolved_config(config, run.config_file)
    return remove_stale_temporaries(run.root)


def _require_inputs(config: RunConfig, run: RunDir, stage: Stage) -> None:
    if not stage.needs_inputs:
        return
    manifest = read_manifest(run.root).get("stages", {})
    for dependency in _active_dependencies(config, stage):
        if manifest.get(dependency, {}).get("status") != "done":
            raise MedtuneError(
                f"stage '{stage.name}' needs the output of '{dependency}', which has not completed in {run.root}; "
                f"run `medtune {dependency}` (or `medtune run`) first"
            )


def _resume_or_clear(run: RunDir, stage: Stage, entry: dict[str, Any], current: str, forcing: bool) -> bool:
    """Whether an interrupted attempt of `stage` may be resumed; otherwise its scratch is removed."""
    scratch = run.scratch_folder(stage.name)
    if scratch is None:
        return False
    interrupted_same = entry.get("status") == "running" and entry.get("fingerprint") == current
    if interrupted_same and not forcing and scratch.is_dir():
        return True
    if scratch.exists():
        shutil.rmtree(scratch)  # progress of another recipe, data or artifact
    return False


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
    for name in (force, until):
        if name is not None:
            stage_by_name(name)
    run = RunDir.of(config)
    removed = _open_run(config, run)
    if removed:
        on_event("run", f"removed {len(removed)} unfinished temporary artifact(s) from an interrupted run")
    outcomes: list[StageOutcome] = []
    forcing = False
    for stage in active_stages(config):
        forcing = forcing or stage.name == force
        outcome = _walk_stage(config, run, stage, forcing, on_event)
        outcomes.append(outcome)
        if stage.name == until:
            break
    if until is None:
        write_model_card(config, run)
        write_html_report(run)
    return outcomes


def _walk_stage(
    config: RunConfig, run: RunDir, stage: Stage, forcing: bool, on_event: Callable[[str, str], None]
) -> StageOutcome:
    manifest = read_manifest(run.root)
    entry = manifest.get("stages", {}).get(stage.name, {})
    current = stage_fingerprint(config, stage, manifest)
    finished, changed = _finished(run, entry, current)
    if not forcing and finished:
        on_event(stage.name, "skipped: inputs unchanged and outputs verified")
        return StageOutcome(stage.name, "skipped", 0.0, "unchanged, outputs verified", entry)
    if not forcing and changed:
        on_event(stage.name, f"redoing: {changed}")
    resume = _resume_or_clear(run, stage, entry, current, forcing)
    on_event(stage.name, stage.resume_note(run) if resume else "running")
    try:
        return run_stage(config, stage.name, resume=resume)
    except MedtuneError as exc:
        raise MedtuneError(f"stage '{stage.name}' failed: {exc}") from exc
