"""The eval stage: every requested artifact x benchmark x mode, one results table.

`evaluate(config)` is the pipeline stage (writes runs/<name>/eval/); `evaluate_model(...)` does
the same for any model, folder or GGUF outside a run (`medtune eval --model ...`).
"""

from __future__ import annotations

import gc
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtune.artifacts import atomic_dir, atomic_write_json
from medtune.config import BenchmarkSpec, EvalConfig, ModelConfig, RunConfig
from medtune.errors import ArtifactError, ConfigError
from medtune.eval import report
from medtune.tasks import Item, expand, load_items
from medtune.eval.compare import paired_comparisons
from medtune.eval.metrics import class_report, degenerate_note
from medtune.eval.stats import accuracy, bootstrap_ci

PREDICTIONS = "predictions"


@dataclass(frozen=True)
class Target:
    """One thing to evaluate: a label for the table and how to open it."""

    label: str  # "base", "merged", "adapter", "gguf:<file stem>"
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
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    comparisons: list[dict[str, Any]] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        return {
            "accuracy": {f"{r['artifact']}/{r['benchmark']}/{r['mode']}": r["accuracy"] for r in self.rows},
            "paired_difference": {
                f"{c['artifact']}-vs-{c['versus']}/{c['benchmark']}/{c['mode']}": [c["difference"], *c["ci95"]]
                for c in self.comparisons
            },
            "eval_seconds": round(self.seconds, 1),
        }


def run_targets(config: RunConfig) -> list[Target]:
    """The artifacts of a run named in eval.artifacts, in that order.

    Raises ArtifactError when a requested artifact does not exist (with the command that makes it).
    """
    run_dir = config.run_dir
    targets: list[Target] = []
    for name in config.eval.artifacts:
        if name == "base":
            targets.append(Target("base", "hf", config.model))
        elif name == "adapter":
            folder = run_dir / "adapter"
            if not (folder / "adapter_config.json").is_file():
                raise ArtifactError(f"eval.artifacts has 'adapter' but {folder} holds no adapter; run `medtune train` first")
            targets.append(Target("adapter", "hf", config.model, adapter=folder))
        elif name == "merged":
            folder = run_dir / "merged"
            if not (folder / "config.json").is_file():
                raise ArtifactError(f"eval.artifacts has 'merged' but {folder} holds no model; run `medtune merge` first")
            targets.append(Target("merged", "hf", config.model, merged=folder))
        else:  # gguf or gguf:TYPE
            wanted = name.partition(":")[2].lower()
            files = sorted((run_dir / "gguf").glob("*.gguf"))
            if wanted:
                files = [f for f in files if _stem_has_type(f.stem, wanted)]
            if not files:
                raise ArtifactError(
                    f"eval.artifacts has '{name}' but {run_dir / 'gguf'} has no matching .gguf file; run `medtune export` first"
                )
            merged = run_dir / "merged"
            tokenizer_dir = merged if (merged / "tokenizer_config.json").is_file() else None
            for file in files:
                label = f"gguf:{file.stem.removeprefix(config.name + '-')}"
                targets.append(Target(label, "gguf", config.model, gguf=file, tokenizer_dir=tokenizer_dir))
    return targets


def _stem_has_type(stem: str, wanted: str) -> bool:
    """Whether a GGUF file name (without .gguf) is of the quant type `wanted` (lower case), e.g. demo-Q8_0."""
    stem = stem.lower()
    return stem.endswith(wanted) or f"-{wanted}" in stem


def _selects(name: str, target: Target) -> bool:
    """Whether an eval.artifacts-style name (base, adapter, merged, gguf, gguf:TYPE) names this target."""
    kind, _, wanted = name.lower().partition(":")
    if target.kind == "gguf":
        return kind == "gguf" and (not wanted or _stem_has_type(target.gguf.stem, wanted))
    return kind == target.label


def model_target(model: str, model_cfg: ModelConfig | None = None) -> Target:
    """A Target for `--model`: a .gguf file (llama.cpp), a merged/HF folder, a PEFT adapter folder, a hub id."""
    path = Path(model).expanduser()
    if model.endswith(".gguf"):
        if not path.is_file():
            raise ConfigError(f"--model: GGUF file {model} does not exist")
        return Target(f"gguf:{path.stem}", "gguf", model_cfg or ModelConfig(base=model), gguf=path)
    if path.is_dir() and (path / "adapter_config.json").is_file():
        base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        cfg = model_cfg or (ModelConfig(base=base) if base else None)
        if cfg is None:
            raise ConfigError(f"--model: adapter {model} does not name its base model; evaluate it through its run config")
        return Target(path.name, "hf", cfg, adapter=path)
    return Target(path.name if path.is_dir() else model, "hf", model_cfg or ModelConfig(base=model))


# --- running ----------------------------------------------------------------------------------------


def target_modes(target: Target, eval_cfg: EvalConfig) -> list[str]:
    """eval.modes for this target: cot only where eval.cot_artifacts (when set) selects it."""
    if eval_cfg.cot_artifacts is None:
        return list(eval_cfg.modes)
    selected = any(_selects(name, target) for name in eval_cfg.cot_artifacts)
    return [mode for mode in eval_cfg.modes if mode != "cot" or selected]


def _open(target: Target, eval_cfg: EvalConfig, benchmarks: list[tuple[str, list[Item], int | None]]):
    """Open a backend; llama.cpp gets a context long enough for the longest prompt plus generation."""
    from medtune.eval import backends

    if target.kind == "gguf":
        if target.tokenizer_dir is not None:
            from transformers import AutoTokenizer

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


def _load_benchmarks(specs: list[BenchmarkSpec], seed: int) -> list[tuple[str, list[Item], int | None]]:
    loaded = []
    for spec in specs:
        for member in expand(spec.name):
            loaded.append((member, load_items(member, spec.path, spec.limit, seed), spec.limit))
    return loaded


def _context_size(items: list[Item], tokenizer, mode: str, max_new_tokens: int, prompt_style: str = "chat") -> int:
    from medtune.eval.scoring import prompt_ids

    longest = max(len(prompt_ids(tokenizer, item, mode, prompt_style)) for item in items)
    return longest + (max_new_tokens if mode == "cot" else 8) + 16


def _evaluate_target(
    target: Target,
    benchmarks: list[tuple[str, list[Item], int | None]],
    eval_cfg: EvalConfig,
    on_event: Callable[[str], None],
    bar,
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Every benchmark x mode for one target: its result rows and per-item predictions.

    `bar` is a rich Progress shared by the targets evaluated at the same time (one live display)."""
    from medtune.eval.scoring import score

    rows: list[dict[str, Any]] = []
    predictions: dict[str, list[dict[str, Any]]] = {}
    on_event(f"opening {target.label}")
    backend = None
    try:
        for mode in target_modes(target, eval_cfg):
            for name, items, limit in benchmarks:
                if backend is None:
                    backend = _open(target, eval_cfg, benchmarks)
                began = time.perf_counter()
                task = bar.add_task(f"{target.label} {name} {mode}", total=len(items))
                preds = score(backend, items, mode, max_new_tokens=eval_cfg.max_new_tokens,
                              on_progress=lambda n, task=task: bar.advance(task, n), prompt_style=eval_cfg.prompt_style)
                scored = [(mode, preds, time.perf_counter() - began, {})]
                if mode == "loglik" and eval_cfg.calibrate:  # a separate row; the raw one stays
                    from medtune.eval.calibration import CALIBRATED_MODE, calibrated_predictions

                    began = time.perf_counter()
                    calibrated, prior = calibrated_predictions(backend, items, preds, eval_cfg.prompt_style)
                    scored.append((CALIBRATED_MODE, calibrated, time.perf_counter() - began, {"content_free_prior": prior}))
                for row_mode, row_preds, seconds, extra in scored:
                    rows.append({**_result_row(target, backend.name, name, row_mode, row_preds, items, seconds, limit,
                                               eval_cfg), **extra})
                    predictions[f"{target.label.replace(':', '-')}__{name}__{row_mode}"] = [p.to_json() for p in row_preds]
                    on_event(_row_message(rows[-1]))
    finally:
        if backend is not None:
            backend.close()
        gc.collect()
    return rows, predictions


def _side_by_side(targets: list[Target], eval_cfg: EvalConfig) -> list[int]:
    """Indices of the GGUF targets to evaluate beside the transformers targets: all of them when the
    transformers backend runs on a GPU (so the two groups use different hardware), else none."""
    from medtune.eval.backends import resolve_device

    gguf = [i for i, target in enumerate(targets) if target.kind == "gguf"]
    if not gguf or len(gguf) == len(targets) or not eval_cfg.parallel_gguf:
        return []
    return gguf if resolve_device(eval_cfg.device).startswith("cuda") else []


def _result_row(target: Target, backend_name: str, benchmark: str, mode: str, preds: list, items: list[Item],
                seconds: float, limit: int | None, eval_cfg: EvalConfig) -> dict[str, Any]:
    """One results.json row: accuracy with its CI beside per-class recall, macro-F1, the answer spread
    and the majority baseline."""
    correct = [p.correct for p in preds]
    unparsed = sum(p.predicted is None for p in preds)
    classes = class_report([p.answer for p in preds], [p.predicted for p in preds], items[0].options)
    return {
        "artifact": target.label,
        "backend": backend_name,
        "model": str(target.gguf or target.merged or target.adapter or target.model_cfg.base),
        "benchmark": benchmark,
        "mode": mode,
        "prompt_style": eval_cfg.prompt_style,
        "n": len(preds),
        "correct": int(sum(correct)),
        "accuracy": round(accuracy(correct), 4),
        "ci95": list(bootstrap_ci(correct, eval_cfg.bootstrap_samples, seed=eval_cfg.subset_seed)),
        "parse_failures": unparsed,
        "parse_failure_rate": round(unparsed / len(preds), 4) if preds else 0.0,
        "seconds": round(seconds, 2),
        "items_per_second": round(len(preds) / seconds, 3) if seconds > 0 else 0.0,
        "macro_f1": classes["macro_f1"],
        "recall": classes["recall"],
        "predicted": classes["predicted"],
        "gold": classes["gold"],
        "majority_label": classes["majority_label"],
        "majority_baseline": classes["majority_baseline"],
        "majority_macro_f1": classes["majority_macro_f1"],
        "degenerate": classes["degenerate"],
        "limit": limit,
    }


def _row_message(row: dict[str, Any]) -> str:
    flag = degenerate_note(row.get("degenerate"))
    return (f"{row['artifact']} {row['benchmark']} {row['mode']}: accuracy {row['accuracy']:.3f} "
            f"(95% CI {row['ci95'][0]:.3f}-{row['ci95'][1]:.3f}, macro-F1 {row.get('macro_f1', 0):.3f}, n={row['n']}, "
            f"{row['seconds']:.0f} s){'; ' + flag if flag else ''}")


def evaluate_targets(
    targets: list[Target],
    specs: list[BenchmarkSpec],
    eval_cfg: EvalConfig,
    out_dir: Path,
    *,
    meta: dict[str, Any] | None = None,
    on_event: Callable[[str], None] = lambda message: None,
    partial_dir: Path | None = None,
) -> EvalResult:
    """Evaluate every target on every benchmark and mode; write results, report and figure atomically.

    With `partial_dir`, each finished target's rows and predictions are saved there as it
    completes, and targets already saved there are not evaluated again: an interrupted eval
    resumes where it stopped. The caller guarantees the saved results belong to the same inputs
    (the pipeline only resumes an attempt with the same fingerprint); the folder is removed once
    the results are written.
    """
    from medtune.ui import progress

    started = time.perf_counter()
    benchmarks = _load_benchmarks(specs, eval_cfg.subset_seed)

    def run_one(target: Target, bar) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
        saved = partial_dir / f"{target.label.replace(':', '-')}.json" if partial_dir is not None else None
        if saved is not None and saved.is_file():
            done = json.loads(saved.read_text(encoding="utf-8"))
            on_event(f"{target.label}: kept the results of the interrupted attempt")
            return done["rows"], done["predictions"]
        target_rows, target_predictions = _evaluate_target(target, benchmarks, eval_cfg, on_event, bar)
        if saved is not None:
            saved.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(saved, {"rows": target_rows, "predictions": target_predictions})
        return target_rows, target_predictions

    finished: dict[int, tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]] = {}
    with progress() as bar:
        side = _side_by_side(targets, eval_cfg)
        if side:
            # GGUF files run in llama.cpp on the CPU while the transformers targets use the GPU: one
            # thread each (both libraries release the GIL inside their kernels), so the eval stage takes
            # about as long as the slower group rather than the sum of both.
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(1, thread_name_prefix="llama.cpp") as pool:
                cpu = pool.submit(lambda: {i: run_one(targets[i], bar) for i in side})
                for index, target in enumerate(targets):
                    if index not in side:
                        finished[index] = run_one(target, bar)
                finished.update(cpu.result())
        else:
            for index, target in enumerate(targets):
                finished[index] = run_one(target, bar)
    rows: list[dict[str, Any]] = []
    predictions: dict[str, list[dict[str, Any]]] = {}
    for index in range(len(targets)):
        rows.extend(finished[index][0])
        predictions.update(finished[index][1])
    meta = {
        **(meta or {}),
        "modes": list(eval_cfg.modes),
        "prompt_style": eval_cfg.prompt_style,
        "calibrate": eval_cfg.calibrate,
        "cot_artifacts": eval_cfg.cot_artifacts,
        "bootstrap_samples": eval_cfg.bootstrap_samples,
        "subset_seed": eval_cfg.subset_seed,
        "subset": {name: limit for name, _, limit in benchmarks if limit},
        "seconds": round(time.perf_counter() - started, 2),
    }
    comparisons = paired_comparisons(rows, predictions, samples=eval_cfg.bootstrap_samples, seed=eval_cfg.subset_seed)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        report.write_results(tmp, rows, meta, comparisons)
        report.write_report(tmp, rows, meta, comparisons)
        report.write_figure(tmp, rows)
        if predictions:
            (tmp / PREDICTIONS).mkdir()
            for key, records in predictions.items():
                text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
                (tmp / PREDICTIONS / f"{key}.jsonl").write_text(text, encoding="utf-8")
    if partial_dir is not None and partial_dir.exists():
        shutil.rmtree(partial_dir)
    return EvalResult(out_dir, rows, time.perf_counter() - started, comparisons)


def evaluate(config: RunConfig, resume: bool = False) -> EvalResult:
    """The pipeline stage: evaluate config.eval.artifacts on config.eval.benchmarks in config.eval.modes.

    Writes runs/<name>/eval/{results.json, report.md, accuracy.png, predictions/} atomically.
    Each finished artifact is kept in runs/<name>/eval-partial/ until then; `resume` reuses what
    an interrupted attempt with the same fingerprint finished (the pipeline decides; without it,
    leftovers are discarded).
    With no benchmarks configured it writes a report saying so. Raises ArtifactError for missing
    artifacts, DataError for unreadable benchmark data, ModelError/ToolError when a model cannot be run.
    """
    from medtune.pipeline import EVAL_PARTIAL
    from medtune.ui import console

    targets = run_targets(config) if config.eval.benchmarks else []
    partial_dir = config.run_dir / EVAL_PARTIAL
    if not resume and partial_dir.exists():
        shutil.rmtree(partial_dir)
    return evaluate_targets(
        targets, config.eval.benchmarks, config.eval, config.run_dir / "eval",
        meta={"run": config.name}, on_event=lambda message: console.print(f"[cyan]    eval[/cyan]  {message}"),
        partial_dir=partial_dir,
    )


def evaluate_model(model: str, specs: list[BenchmarkSpec], eval_cfg: EvalConfig, out_dir: Path,
                   *, on_event: Callable[[str], None] = lambda message: None) -> EvalResult:
    """Evaluate one model outside a run: hub id, HF folder, PEFT adapter folder, embedded name, or .gguf."""
    return evaluate_targets([model_target(model)], specs, eval_cfg, out_dir, meta={"model": model}, on_event=on_event)


SUMMARY_COLUMNS = ("artifact", "benchmark", "mode", "accuracy %", "95% CI", "macro-F1", "majority %", "n",
                   "unparsed %", "seconds", "note")


def summary_rows(rows: list[dict[str, Any]]) -> Iterator[tuple[Any, ...]]:
    """CLI summary-table rows (SUMMARY_COLUMNS): accuracy beside macro-F1, the majority baseline and the
    degenerate-answer flag, so a constant answer never passes for a result."""
    for r in rows:
        yield (r["artifact"], r["benchmark"], r["mode"], f"{100 * r['accuracy']:.1f}",
               f"{100 * r['ci95'][0]:.1f}-{100 * r['ci95'][1]:.1f}", f"{r.get('macro_f1', 0):.3f}",
               f"{100 * r.get('majority_baseline', 0):.1f}", r["n"], f"{100 * r['parse_failure_rate']:.1f}",
               f"{r['seconds']:.1f}", degenerate_note(r.get("degenerate")))
