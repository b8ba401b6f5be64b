"""The eval stage: every requested artifact x benchmark x mode, one results table.

`evaluate(config, run)` is the pipeline stage (writes the run's eval/ folder); `evaluate_model(...)`
does the same for any model, folder or GGUF outside a run (`medtune eval --model ...`). Which
files are where, and what a path handed to `--model` is, come from medtune.rundir.
"""

from __future__ import annotations

import gc
import json
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtune.artifacts import atomic_dir, atomic_write_json, atomic_write_text
from medtune.config import BenchmarkSpec, EvalConfig, ModelConfig, RunConfig
from medtune.errors import ArtifactError, ConfigError
from medtune.eval import backends, report
from medtune.eval.calibration import CALIBRATED_MODE, calibrated_predictions
from medtune.eval.compare import paired_comparisons
from medtune.eval.guard import GuardReport, run_guard
from medtune.eval.metrics import class_report
from medtune.eval.rows import (
    SUMMARY_COLUMNS,
    EvalRow,
    chance_level,
    option_counts,
    summary_rows,
)
from medtune.eval.scoring import Prediction, prompt_ids, score
from medtune.eval.stats import accuracy, bootstrap_ci
from medtune.rundir import Artifact, EvalFiles, RunDir, open_artifact, stem_has_type
from medtune.tasks import Item, expand, load_items
from medtune.ui import console, progress

__all__ = ["SUMMARY_COLUMNS", "EvalResult", "Target", "evaluate", "evaluate_model", "evaluate_targets",
           "model_target", "run_targets", "summary_rows", "target_modes"]

Benchmarks = list[tuple[str, list[Item], int | None]]  # (benchmark, its items, the configured limit)
TargetOutcome = tuple[list[EvalRow], dict[str, list[dict[str, Any]]]]  # rows, predictions by file key


@dataclass(frozen=True)
class Target:
    """One thing to evaluate: a label for the table and how to open it."""

    label: str  # "base", "merged", "adapter", "gguf:<type>"
    kind: str  # "hf" or "gguf"
    model_cfg: ModelConfig
    adapter: Path | None = None
    merged: Path | None = None
    gguf: Path | None = None
    tokenizer_dir: Path | None = None  # HF folder whose tokenizer renders prompts for a GGUF


@dataclass
class EvalResult:
    """What the eval stage produced: one row per artifact x benchmark x mode."""

    out_dir: Path
    rows: list[EvalRow] = field(default_factory=list)
    seconds: float = 0.0
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    guard: GuardReport | None = None  # the forgetting guard, when eval.guard is on

    def figures(self) -> dict[str, Any]:
        guard = {"guard_flagged": [s.subject for s in self.guard.flagged]} if self.guard else {}
        return {
            **guard,
            "accuracy": {row.key: row.accuracy for row in self.rows},
            "paired_difference": {
                f"{c['artifact']}-vs-{c['versus']}/{c['benchmark']}/{c['mode']}": [c["difference"], *c["ci95"]]
                for c in self.comparisons
            },
            "eval_seconds": round(self.seconds, 1),
        }


# --- what to evaluate ---------------------------------------------------------------------------------


def run_targets(config: RunConfig, run: RunDir) -> list[Target]:
    """The artifacts of a run named in eval.artifacts, in that order.

    Raises ArtifactError when a requested artifact does not exist (with the command that makes it).
    """
    targets: list[Target] = []
    for name in config.eval.artifacts:
        if name == "base":
            targets.append(Target("base", "hf", config.model))
        elif name == "adapter":
            folder = _require_kind(run.adapter, "adapter", name, "an adapter", "train")
            targets.append(Target("adapter", "hf", config.model, adapter=folder))
        elif name == "merged":
            folder = _require_kind(run.merged, "merged", name, "a model", "merge")
            targets.append(Target("merged", "hf", config.model, merged=folder))
        else:  # gguf or gguf:TYPE
            targets += _run_gguf_targets(run, name, config.model)
    return targets


def _require_kind(folder: Path, kind: str, name: str, what: str, command: str) -> Path:
    try:
        found = open_artifact(folder).kind if folder.exists() else None
    except ArtifactError:
        found = None
    if found != kind:
        raise ArtifactError(f"eval.artifacts has '{name}' but {folder} holds no {what.split()[-1]}; "
                            f"run `medtune {command}` first")
    return folder


def _run_gguf_targets(run: RunDir, name: str, model_cfg: ModelConfig) -> list[Target]:
    wanted = name.partition(":")[2]
    files = [f for f in run.gguf_files() if not wanted or stem_has_type(f.stem, wanted)]
    if not files:
        raise ArtifactError(f"eval.artifacts has '{name}' but {run.gguf} has no matching .gguf file; run `medtune export` first")
    tokenizer_dir = _tokenizer_folder(run)
    return [Target(f"gguf:{run.quant_name(file)}", "gguf", model_cfg, gguf=file, tokenizer_dir=tokenizer_dir) for file in files]


def _tokenizer_folder(run: RunDir | None) -> Path | None:
    """The run's merged folder when it holds a tokenizer: GGUF prompts are rendered with it."""
    if run is None:
        return None
    return run.merged if (run.merged / "tokenizer_config.json").is_file() else None


def model_target(model: str, model_cfg: ModelConfig | None = None) -> Target:
    """The Target for `--model` when it names one model (see model_targets)."""
    return model_targets(model, model_cfg)[0]


def model_targets(model: str, model_cfg: ModelConfig | None = None) -> list[Target]:
    """Targets for `--model`: a .gguf file or a folder of them (llama.cpp), a merged/HF folder, a PEFT
    adapter folder, a run folder (its merged model and GGUF files), or a hub id / embedded name.
    Raises ArtifactError for a path that exists but holds no model, ConfigError for an adapter that
    does not name its base."""
    path = Path(model).expanduser()
    if not path.exists() and not model.endswith(".gguf"):
        return [Target(model, "hf", model_cfg or ModelConfig(base=model))]  # a hub id or an embedded name
    artifact = open_artifact(path)
    if artifact.kind == "gguf":
        return _gguf_targets(artifact, model_cfg or ModelConfig(base=model))
    if artifact.kind == "adapter":
        return [_adapter_target(artifact, model_cfg)]
    if artifact.kind == "merged":
        return [Target(path.name, "hf", model_cfg or ModelConfig(base=model), merged=path)]
    run = artifact.run
    targets = [Target("merged", "hf", model_cfg or ModelConfig(base=str(run.merged)), merged=run.merged)
               ] if _tokenizer_folder(run) else []
    files = run.gguf_files()
    if files:
        targets += _gguf_targets(open_artifact(run.gguf), model_cfg or ModelConfig(base=str(run.gguf)))
    if not targets:
        raise ArtifactError(f"{path}: the run has no merged model or GGUF file to evaluate; run `medtune merge` or `medtune export`")
    return targets


def _gguf_targets(artifact: Artifact, model_cfg: ModelConfig) -> list[Target]:
    tokenizer_dir = _tokenizer_folder(artifact.run)
    return [Target(f"gguf:{artifact.label(file)}", "gguf", model_cfg, gguf=file, tokenizer_dir=tokenizer_dir)
            for file in artifact.gguf_files]


def _adapter_target(artifact: Artifact, model_cfg: ModelConfig | None) -> Target:
    settings = json.loads((artifact.path / "adapter_config.json").read_text(encoding="utf-8"))
    base = settings.get("base_model_name_or_path")
    cfg = model_cfg or (ModelConfig(base=base) if base else None)
    if cfg is None:
        raise ConfigError(f"--model: adapter {artifact.path} does not name its base model; evaluate it through its run config")
    return Target(artifact.path.name, "hf", cfg, adapter=artifact.path)


def _selects(name: str, target: Target) -> bool:
    """Whether an eval.artifacts-style name (base, adapter, merged, gguf, gguf:TYPE) names this target."""
    kind, _, wanted = name.lower().partition(":")
    if target.kind == "gguf":
        return kind == "gguf" and (not wanted or stem_has_type(target.gguf.stem, wanted))
    return kind == target.label


def target_modes(target: Target, eval_cfg: EvalConfig) -> list[str]:
    """eval.modes for this target: cot only where eval.cot_artifacts (when set) selects it."""
    if eval_cfg.cot_artifacts is None:
        return list(eval_cfg.modes)
    selected = any(_selects(name, target) for name in eval_cfg.cot_artifacts)
    return [mode for mode in eval_cfg.modes if mode != "cot" or selected]


# --- running ----------------------------------------------------------------------------------------


def _open(target: Target, eval_cfg: EvalConfig, benchmarks: Benchmarks):
    """Open a backend; llama.cpp gets a context long enough for the longest prompt plus generation."""
    if target.kind == "gguf":
        if target.tokenizer_dir is not None:
            from transformers import AutoTokenizer  # heavy

            tokenizer = AutoTokenizer.from_pretrained(str(target.tokenizer_dir))
        else:
            tokenizer = backends.gguf_tokenizer(target.gguf)
        n_ctx = max(_context_size(items, tokenizer, mode, eval_cfg.max_new_tokens, eval_cfg.prompt_style)
                    for mode in target_modes(target, eval_cfg) for _, items, _ in benchmarks)
        return backends.open_llamacpp(target.gguf, tokenizer, n_ctx=n_ctx, n_threads=eval_cfg.n_threads)
    device = backends.resolve_device(eval_cfg.device)
    return backends.open_transformers(
        target.model_cfg, adapter=target.adapter, merged=target.merged, device=device, dtype=eval_cfg.dtype,
        batch_size=eval_cfg.batch_size,
    )


def _load_benchmarks(specs: list[BenchmarkSpec], seed: int) -> Benchmarks:
    loaded = []
    for spec in specs:
        for member in expand(spec.name):
            loaded.append((member, load_items(member, spec.path, spec.limit, seed), spec.limit))
    return loaded


def _context_size(items: list[Item], tokenizer, mode: str, max_new_tokens: int, prompt_style: str = "chat") -> int:
    longest = max(len(prompt_ids(tokenizer, item, mode, prompt_style)) for item in items)
    return longest + (max_new_tokens if mode == "cot" else 8) + 16


def _score_one(backend, items: list[Item], mode: str, eval_cfg: EvalConfig, advance: Callable[[int], None]
               ) -> list[tuple[str, list[Prediction], float, dict[str, Any]]]:
    """(mode, predictions, seconds, extra row fields) for one benchmark in one mode; loglik with
    eval.calibrate adds a loglik_calibrated entry (a separate row: the raw one stays)."""
    began = time.perf_counter()
    preds = score(backend, items, mode, max_new_tokens=eval_cfg.max_new_tokens, on_progress=advance,
                  prompt_style=eval_cfg.prompt_style)
    scored = [(mode, preds, time.perf_counter() - began, {})]
    if mode == "loglik" and eval_cfg.calibrate:
        began = time.perf_counter()
        calibrated, prior = calibrated_predictions(backend, items, preds, eval_cfg.prompt_style)
        scored.append((CALIBRATED_MODE, calibrated, time.perf_counter() - began, {"content_free_prior": prior}))
    return scored


def _evaluate_target(target: Target, benchmarks: Benchmarks, eval_cfg: EvalConfig,
                     on_event: Callable[[str], None], bar) -> TargetOutcome:
    """Every benchmark x mode for one target: its result rows and per-item predictions.

    `bar` is a rich Progress shared by the targets evaluated at the same time (one live display)."""
    rows: list[EvalRow] = []
    predictions: dict[str, list[dict[str, Any]]] = {}
    on_event(f"opening {target.label}")
    backend = None
    try:
        for mode in target_modes(target, eval_cfg):
            for name, items, limit in benchmarks:
                backend = backend or _open(target, eval_cfg, benchmarks)
                task = bar.add_task(f"{target.label} {name} {mode}", total=len(items))
                for row_mode, preds, seconds, extra in _score_one(
                        backend, items, mode, eval_cfg, lambda n, task=task: bar.advance(task, n)):
                    rows.append(result_row(target, backend.name, name, row_mode, preds, items, seconds, limit,
                                           eval_cfg, **extra))
                    predictions[_predictions_key(target.label, name, row_mode)] = [p.to_json() for p in preds]
                    on_event(_row_message(rows[-1]))
    finally:
        if backend is not None:
            backend.close()
        gc.collect()
    return rows, predictions


def _predictions_key(artifact: str, benchmark: str, mode: str) -> str:
    """The key eval.compare matches predictions by (the predictions file's name without .jsonl)."""
    return f"{artifact.replace(':', '-')}__{benchmark}__{mode}"


def _side_by_side(targets: list[Target], eval_cfg: EvalConfig) -> list[int]:
    """Indices of the GGUF targets to evaluate beside the transformers targets: all of them when the
    transformers backend runs on a GPU (so the two groups use different hardware), else none."""
    gguf = [i for i, target in enumerate(targets) if target.kind == "gguf"]
    if not gguf or len(gguf) == len(targets) or not eval_cfg.parallel_gguf:
        return []
    return gguf if backends.resolve_device(eval_cfg.device).startswith("cuda") else []


def result_row(target: Target, backend_name: str, benchmark: str, mode: str, preds: list[Prediction],
               items: list[Item], seconds: float, limit: int | None, eval_cfg: EvalConfig,
               content_free_prior: dict[str, Any] | None = None) -> EvalRow:
    """One results row: accuracy with its CI beside per-class recall, macro-F1, the answer spread, the
    majority baseline and chance (items may have different numbers of options: every label counts)."""
    correct = [p.correct for p in preds]
    unparsed = sum(p.predicted is None for p in preds)
    labels = list(dict.fromkeys(label for item in items for label in item.options))
    classes = class_report([p.answer for p in preds], [p.predicted for p in preds], labels)
    return EvalRow(
        artifact=target.label, backend=backend_name, benchmark=benchmark, mode=mode,
        model=str(target.gguf or target.merged or target.adapter or target.model_cfg.base),
        prompt_style=eval_cfg.prompt_style, n=len(preds), correct=int(sum(correct)),
        accuracy=round(accuracy(correct), 4),
        ci95=tuple(bootstrap_ci(correct, eval_cfg.bootstrap_samples, seed=eval_cfg.subset_seed)),
        parse_failures=unparsed, parse_failure_rate=round(unparsed / len(preds), 4) if preds else 0.0,
        seconds=round(seconds, 2), items_per_second=round(len(preds) / seconds, 3) if seconds > 0 else 0.0,
        macro_f1=classes["macro_f1"], recall=classes["recall"], predicted=classes["predicted"], gold=classes["gold"],
        majority_label=classes["majority_label"], majority_baseline=classes["majority_baseline"],
        majority_macro_f1=classes["majority_macro_f1"], degenerate=classes["degenerate"], limit=limit,
        chance=chance_level(items), option_counts=option_counts(items), content_free_prior=content_free_prior,
    )


def _row_message(row: EvalRow) -> str:
    flags = row.note()
    return (f"{row.artifact} {row.benchmark} {row.mode}: accuracy {row.accuracy:.3f} "
            f"(95% CI {row.ci95[0]:.3f}-{row.ci95[1]:.3f}, macro-F1 {row.macro_f1 or 0:.3f}, n={row.n}, "
            f"{row.seconds:.0f} s){'; ' + flags if flags else ''}")


# --- the whole eval -----------------------------------------------------------------------------------


def _run_saving(target: Target, benchmarks: Benchmarks, eval_cfg: EvalConfig, on_event: Callable[[str], None],
                bar, saved: Path | None) -> TargetOutcome:
    """One target's outcome; with `saved`, the outcome of an interrupted attempt is reused, and a new
    one is written there as soon as it is finished."""
    if saved is not None and saved.is_file():
        done = json.loads(saved.read_text(encoding="utf-8"))
        on_event(f"{target.label}: kept the results of the interrupted attempt")
        return [EvalRow.from_json(r, str(saved)) for r in done["rows"]], done["predictions"]
    rows, predictions = _evaluate_target(target, benchmarks, eval_cfg, on_event, bar)
    if saved is not None:
        atomic_write_json(saved, {"rows": [r.to_json() for r in rows], "predictions": predictions})
    return rows, predictions


def _run_all(targets: list[Target], benchmarks: Benchmarks, eval_cfg: EvalConfig, on_event: Callable[[str], None],
             partial: Callable[[str], Path] | None) -> TargetOutcome:
    """Every target's rows and predictions, in target order."""
    finished: dict[int, TargetOutcome] = {}
    with progress() as bar:
        def run_one(index: int) -> TargetOutcome:
            target = targets[index]
            return _run_saving(target, benchmarks, eval_cfg, on_event, bar, partial(target.label) if partial else None)

        side = _side_by_side(targets, eval_cfg)
        # GGUF files run in llama.cpp on the CPU while the transformers targets use the GPU: one thread
        # each (both libraries release the GIL inside their kernels), so the stage takes about as long
        # as the slower group rather than the sum of both. Without a GPU, `side` is empty.
        with ThreadPoolExecutor(1, thread_name_prefix="llama.cpp") as pool:
            cpu = pool.submit(lambda: {i: run_one(i) for i in side})
            for index in range(len(targets)):
                if index not in side:
                    finished[index] = run_one(index)
            finished.update(cpu.result())
    rows = [row for index in range(len(targets)) for row in finished[index][0]]
    predictions = {key: records for index in range(len(targets)) for key, records in finished[index][1].items()}
    return rows, predictions


def _meta(meta: dict[str, Any] | None, eval_cfg: EvalConfig, benchmarks: Benchmarks, seconds: float) -> dict[str, Any]:
    return {
        **(meta or {}),
        "modes": list(eval_cfg.modes),
        "prompt_style": eval_cfg.prompt_style,
        "calibrate": eval_cfg.calibrate,
        "cot_artifacts": eval_cfg.cot_artifacts,
        "bootstrap_samples": eval_cfg.bootstrap_samples,
        "subset_seed": eval_cfg.subset_seed,
        "subset": {name: limit for name, _, limit in benchmarks if limit},
        "seconds": round(seconds, 2),
    }


def _write_outputs(out_dir: Path, rows: list[EvalRow], meta: dict[str, Any], comparisons: list[dict[str, Any]],
                   predictions: dict[str, list[dict[str, Any]]]) -> None:
    """results.json, report.md, accuracy.png and predictions/, all or nothing (one atomic folder)."""
    with atomic_dir(Path(out_dir)) as tmp:
        files = EvalFiles(tmp)
        report.write_results(files, rows, meta, comparisons)
        report.write_report(files, rows, meta, comparisons)
        report.write_figure(files, rows)
        for key, records in predictions.items():
            artifact, benchmark, mode = key.rsplit("__", 2)  # benchmark and mode names have no "__"
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            atomic_write_text(files.predictions_file(artifact, benchmark, mode), text)


def evaluate_targets(
    targets: list[Target],
    specs: list[BenchmarkSpec],
    eval_cfg: EvalConfig,
    out_dir: Path,
    *,
    meta: dict[str, Any] | None = None,
    on_event: Callable[[str], None] = lambda message: None,
    partial: Callable[[str], Path] | None = None,
) -> EvalResult:
    """Evaluate every target on every benchmark and mode; write results, report, figure and
    predictions into `out_dir` atomically.

    With `partial` (artifact label -> file), each finished target's rows and predictions are saved
    as it completes, and targets already saved are not evaluated again: an interrupted eval resumes
    where it stopped. The caller guarantees the saved results belong to the same inputs (the
    pipeline only resumes an attempt with the same fingerprint).
    """
    started = time.perf_counter()
    benchmarks = _load_benchmarks(specs, eval_cfg.subset_seed)
    rows, predictions = _run_all(targets, benchmarks, eval_cfg, on_event, partial)
    comparisons = paired_comparisons(rows, predictions, samples=eval_cfg.bootstrap_samples, seed=eval_cfg.subset_seed)
    _write_outputs(out_dir, rows, _meta(meta, eval_cfg, benchmarks, time.perf_counter() - started), comparisons,
                   predictions)
    return EvalResult(Path(out_dir), rows, time.perf_counter() - started, comparisons)


def evaluate(config: RunConfig, run: RunDir, *, resume: bool = False) -> EvalResult:
    """The pipeline stage: evaluate config.eval.artifacts on config.eval.benchmarks in config.eval.modes.

    Writes the run's eval/ (results.json, report.md, accuracy.png, predictions/) atomically. Each
    finished artifact is kept in the run's eval-partial/ until then; `resume` reuses what an
    interrupted attempt with the same fingerprint finished (the pipeline decides; without it,
    leftovers are discarded). With no benchmarks configured it writes a report saying so.
    Raises ArtifactError for missing artifacts, DataError for unreadable benchmark data,
    ModelError/ToolError when a model cannot be run.
    """
    targets = run_targets(config, run) if config.eval.benchmarks else []
    if not resume and run.eval_partial.exists():
        shutil.rmtree(run.eval_partial)
    result = evaluate_targets(
        targets, config.eval.benchmarks, config.eval, run.eval,
        meta={"run": config.name}, on_event=lambda message: console.print(f"[cyan]    eval[/cyan]  {message}"),
        partial=run.eval_partial_file,
    )
    if run.eval_partial.exists():
        shutil.rmtree(run.eval_partial)
    result.guard = forgetting_guard(config, run) if config.eval.guard.enabled else None
    return result


def forgetting_guard(config: RunConfig, run: RunDir) -> GuardReport:
    """Score eval.guard's subjects on base and on eval.guard.artifact (loglik), write guard.json and the
    guard's table under report.md in the run's eval folder, and print each flagged subject."""
    guard = config.eval.guard
    targets = {t.label: t for t in run_targets(config.model_copy(update={"eval": config.eval.model_copy(
        update={"artifacts": ["base", guard.artifact], "cot_artifacts": None, "modes": ["loglik"]})}), run)}

    def score_subjects(label: str, items: dict[str, list[Item]]) -> dict[str, list[dict[str, Any]]]:
        target = targets[label] if label in targets else next(t for t in targets.values() if t.label != "base")
        backend = _open(target, config.eval, [(subject, subject_items, None) for subject, subject_items in items.items()])
        found = {subject: [p.to_json() for p in score(backend, subject_items, "loglik")] for subject, subject_items in items.items()}
        del backend
        gc.collect()
        return found

    report_ = run_guard(guard, score_subjects, artifact=guard.artifact, samples=config.eval.bootstrap_samples,
                        seed=config.eval.subset_seed)
    files = EvalFiles(run.eval)
    atomic_write_json(files.guard, report_.to_json())
    atomic_write_text(files.report, files.report.read_text(encoding="utf-8") + "\n" + report_.markdown())
    for line in report_.summary_lines() or ["forgetting guard: no subject dropped beyond eval.guard.max_drop"]:
        console.print(f"[yellow]    eval[/yellow]  {line}")
    return report_


def evaluate_model(model: str, specs: list[BenchmarkSpec], eval_cfg: EvalConfig, out_dir: Path,
                   *, on_event: Callable[[str], None] = lambda message: None) -> EvalResult:
    """Evaluate one model outside a run: hub id, HF folder, PEFT adapter folder, embedded name, .gguf
    file or folder of them, or a run folder (its merged model and GGUF files)."""
    return evaluate_targets(model_targets(model), specs, eval_cfg, out_dir, meta={"model": model}, on_event=on_event)
