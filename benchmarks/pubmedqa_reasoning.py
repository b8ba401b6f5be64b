#!/usr/bin/env python3
"""PubMedQA reasoning fine-tune: choose the recipe by cross-validation on the train pool, then score
the test split once with the chosen recipe.

  sweep   k-fold cross-validation (default 3) over the 500 PQA-L records outside the test split: every variant of
          configs/pubmedqa-reasoning-smollm2.yaml in VARIANTS (one change at a time from the config,
          then the per-dimension winners combined) is trained on k-1 folds and scored on the held-out one, loglik
          and cot, through medtune's own stages (prepare, train, eval on the adapter), several jobs side
          by side on one GPU. The pooled out-of-fold predictions (500 items per variant) give each
          variant's accuracy, macro-F1, per-class recall and paired difference vs the base model; the
          variant with the best (cot accuracy + cot macro-F1) / 2 is chosen. The test split is never read.
  choice  print the --set overrides of the chosen variant (for `medtune run`), one per line, from a sweep
          JSON or from the committed results file (its "sweep" part: the recipe the committed figures used).
  record  benchmarks/results/pubmedqa_reasoning.json from the sweep (either file) and the final run's folder.

  python benchmarks/pubmedqa_reasoning.py sweep --pubmedqa ../shared/data/pubmedqa --workers 12 --out sweep.json
  python benchmarks/pubmedqa_reasoning.py choice sweep.json > recipe.txt   # fails loudly on a missing file
  mapfile -t chosen < recipe.txt
  medtune run configs/pubmedqa-reasoning-smollm2.yaml "${chosen[@]}"
  python benchmarks/pubmedqa_reasoning.py record --sweep sweep.json --run runs/pubmedqa-reasoning-smollm2

Fold folders hold the train pool in PubMedQA's release layout (ori_pqal.json with the 500 pool records,
test_ground_truth.json with the fold's ids), so the `pubmedqa-reasoning:` source yields the other
folds and the `pubmedqa` benchmark the held-out fold: the product's own code paths, nothing re-implemented.
They are derived copies under the work folder (git-ignored runs/), never committed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from medtune.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "pubmedqa-reasoning-smollm2.yaml"
MODES = ("loglik", "cot")
FOLDS = 3  # 3 x ~167 held-out items: every train/dev record scored once, at a third of 5-fold's trainings
SEED = 0

# One change at a time from the config's recipe; "{pool}" is the data folder (a fold's, or the release's).
VARIANTS: dict[str, dict[str, Any]] = {  # most telling first: a sweep cut short by time keeps these
    "config": {},
    "plus_direct": {"data.files": ["pubmedqa-train:{pool}"]},  # the same cot examples + a direct answer each
    "loss_final_answer": {"data.loss_on": "final_answer"},
    "lr_1e-3": {"train.learning_rate": 1e-3},
    "lr_1e-4": {"train.learning_rate": 1e-4},
    "epochs_5": {"train.epochs": 5},
    "r64": {"lora.r": 64, "lora.alpha": 128},
    "qkvo": {"lora.target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
    "epochs_2": {"train.epochs": 2},
    # Round 2 (after round 1 chose lr 1e-3, with plus_direct and r64 the next best): those winners
    # combined, and a step past 1e-3. Run with --variants and --previous round1.json.
    "lr_1e-3_direct": {"train.learning_rate": 1e-3, "data.files": ["pubmedqa-train:{pool}"]},
    "lr_1e-3_direct_r64": {"train.learning_rate": 1e-3, "data.files": ["pubmedqa-train:{pool}"], "lora.r": 64,
                           "lora.alpha": 128},
    "lr_1e-3_r64": {"train.learning_rate": 1e-3, "lora.r": 64, "lora.alpha": 128},
    "lr_2e-3": {"train.learning_rate": 2e-3},
}
# Variants that change the same setting: the winner of each group joins the combined variant.
DIMENSIONS = {
    "lr": ["lr_1e-4", "lr_1e-3"], "epochs": ["epochs_2", "epochs_5"], "capacity": ["r64", "qkvo"],
    "loss": ["loss_final_answer"], "mix": ["plus_direct"],
}
# The recipe the variants change, pinned here: configs/pubmedqa-reasoning-smollm2.yaml as it stood for
# round 1 (it now holds the chosen recipe), so the committed sweep tables stay reproducible. Scoring in
# the sweep keeps the default precision (bf16 on a GPU) it was run with.
SWEEP_START: dict[str, Any] = {"train.learning_rate": 3e-4, "lora.r": 16, "lora.alpha": 32,
                               "lora.target_modules": "all-linear", "train.epochs": 3, "data.loss_on": "reply"}
SWEEP_EVAL = {"eval.dtype": "auto"}
# The sweep's settings beside the recipe: fast scoring of a 100-item fold, no checkpoints to speak of.
JOB_SETTINGS = {
    "data.num_proc": 1, "train.save_steps": 10_000, "train.eval_steps": 10_000, "train.test_question": False,
    "eval.batch_size": 128, "eval.cot_artifacts": None,
}


# --- folds -------------------------------------------------------------------------------------------


def train_pool(pubmedqa: Path) -> dict[str, dict[str, Any]]:
    records = json.loads((pubmedqa / "ori_pqal.json").read_text(encoding="utf-8"))
    test_ids = set(json.loads((pubmedqa / "test_ground_truth.json").read_text(encoding="utf-8")))
    return {pmid: record for pmid, record in records.items() if pmid not in test_ids}


def stratified_folds(pool: dict[str, dict[str, Any]], k: int, seed: int) -> list[list[str]]:
    """k folds with the yes/no/maybe shares of the pool, deterministic for a seed."""
    folds: list[list[str]] = [[] for _ in range(k)]
    rng = random.Random(seed)
    for label in ("yes", "no", "maybe"):
        ids = sorted(p for p, r in pool.items() if r["final_decision"] == label)
        rng.shuffle(ids)
        for i, pmid in enumerate(ids):
            folds[i % k].append(pmid)
    return [sorted(f) for f in folds]


def write_fold(pool: dict[str, dict[str, Any]], held_out: list[str], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ori_pqal.json").write_text(json.dumps(pool))
    (folder / "test_ground_truth.json").write_text(json.dumps({p: pool[p]["final_decision"] for p in held_out}))
    return folder


# --- jobs --------------------------------------------------------------------------------------------


def job_overrides(variant: dict[str, Any], fold_dir: Path, base_model: str, name: str, runs: Path,
                  artifact: str, extra: dict[str, Any], item_limit: int | None) -> dict[str, Any]:
    overrides = {
        "name": name, "output_dir": str(runs), "model.base": base_model,
        "data.files": [f"pubmedqa-reasoning:{fold_dir}"],
        "eval.benchmarks": [{"name": "pubmedqa", "path": str(fold_dir), "limit": item_limit}],
        "eval.artifacts": [artifact], "eval.modes": list(MODES),
        **JOB_SETTINGS, **SWEEP_START, **SWEEP_EVAL, **extra,
    }
    for key, value in variant.items():
        overrides[key] = [v.format(pool=fold_dir) for v in value] if key == "data.files" else value
    return overrides


def resolved_config(overrides: dict[str, Any]) -> dict[str, Any]:
    import yaml

    raw = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    for key, value in overrides.items():
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return raw


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """One (variant, fold): its config written as YAML, then `medtune prepare/train/eval` in one process."""
    import yaml

    folder = Path(job["dir"])
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "config.yaml"
    config_path.write_text(yaml.safe_dump(resolved_config(job["overrides"]), sort_keys=False))
    stages = ["eval"] if job["artifact"] == "base" else ["prepare", "train", "eval"]
    started = time.perf_counter()
    with open(folder / "log.txt", "w") as log:
        done = subprocess.run([sys.executable, __file__, "stages", str(config_path), *stages], stdout=log,
                              stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode == 0
    run = RunDir(Path(job["overrides"]["output_dir"]) / job["overrides"]["name"])
    out = {"variant": job["variant"], "fold": job["fold"], "ok": done, "seconds": round(time.perf_counter() - started, 1),
           "predictions": {}}
    if done:
        label = job["artifact"]
        for mode in MODES:
            path = run.predictions_file(label, "pubmedqa", mode)
            out["predictions"][mode] = [json.loads(line) for line in path.read_text().splitlines()]
        train = run.stage_entry("train")
        out["train"] = {k: train.get(k) for k in ("steps", "train_seconds", "tokens_seen", "train_loss", "val_loss",
                                                   "first_val_loss")}
    else:
        out["log_tail"] = (folder / "log.txt").read_text()[-1500:]
    return out


def stages_command(config_path: str, stages: list[str]) -> None:
    from medtune.config import load_config
    from medtune.pipeline import run_stage

    config = load_config(config_path)
    for stage in stages:
        run_stage(config, stage)


# --- scoring -----------------------------------------------------------------------------------------


def summarize(predictions: list[dict[str, Any]], base: list[dict[str, Any]] | None) -> dict[str, Any]:
    from medtune.eval.metrics import class_report
    from medtune.eval.stats import accuracy, bootstrap_ci, paired_difference

    correct = [bool(p["correct"]) for p in predictions]
    row = {"n": len(predictions), "accuracy": round(accuracy(correct), 4), "ci95": list(bootstrap_ci(correct)),
           **class_report([p["answer"] for p in predictions], [p.get("predicted") for p in predictions],
                          ("yes", "no", "maybe"))}
    if base is not None:
        theirs = {p["id"]: bool(p["correct"]) for p in base}
        shared = [p for p in predictions if p["id"] in theirs]
        diff = paired_difference([bool(p["correct"]) for p in shared], [theirs[p["id"]] for p in shared])
        row["vs_base"] = {"difference": diff["difference"], "ci95": diff["ci95"], "n": diff["n"],
                          "only_finetuned_right": diff["only_a"], "only_base_right": diff["only_b"]}
    return row


def selection_score(row: dict[str, Any]) -> float:
    cot = row["modes"]["cot"]
    return round((cot["accuracy"] + cot["macro_f1"]) / 2, 4)


def table(results: dict[str, Any]) -> str:
    lines = [f"{'variant':<22}{'folds':>6}{'loglik acc':>11}{'F1':>7}{'cot acc':>9}{'F1':>7}{'cot vs base':>13}"
             f"{'score':>8}  cot answers yes/no/maybe/unparsed"]
    for name, row in results["variants"].items():
        if not row.get("modes"):
            lines.append(f"{name:<22}{row['folds_done']:>6}  (incomplete)")
            continue
        ll, cot = row["modes"]["loglik"], row["modes"]["cot"]
        vs = cot.get("vs_base")
        gain = f"{100 * vs['difference']:+.1f}" if vs else "—"
        spread = "/".join(str(cot["predicted"].get(k, 0)) for k in ("yes", "no", "maybe", "unparsed"))
        lines.append(f"{name:<22}{row['folds_done']:>6}{100 * ll['accuracy']:>10.1f}%{ll['macro_f1']:>7.3f}"
                     f"{100 * cot['accuracy']:>8.1f}%{cot['macro_f1']:>7.3f}"
                     f"{gain:>13}"
                     f"{row['score']:>8.3f}  {spread}")
    lines.append(f"chosen: {results.get('chosen')}")
    return "\n".join(lines)


# --- the sweep ---------------------------------------------------------------------------------------


def sweep(args: argparse.Namespace) -> None:
    deadline = time.monotonic() + args.budget_seconds
    variants = {name: VARIANTS[name] for name in (args.variants or VARIANTS)}
    previous = None
    if args.previous:  # a sweep's JSON, or the committed results file that holds one under "sweep"
        loaded = json.loads(Path(args.previous).read_text())
        previous = loaded.get("sweep", loaded)
        collect([], variants, args.fold_limit or args.folds, previous)  # other folds: refused before any job runs
    work = Path(args.work).resolve()
    pubmedqa = Path(args.pubmedqa).resolve()
    pool = train_pool(pubmedqa)
    folds = stratified_folds(pool, args.folds, SEED)
    fold_dirs = [write_fold(pool, held_out, work / "folds" / f"fold{k}") for k, held_out in enumerate(folds)]
    base_model = args.base_model or save_base_model(work / "base-hf")
    runs = work / "runs"
    extra = dict(_parse_setting(text) for text in args.set or [])

    def jobs_for(name: str, variant: dict[str, Any] | None) -> list[dict[str, Any]]:
        artifact = "base" if variant is None else "adapter"
        return [{"variant": name, "fold": k, "artifact": artifact, "dir": str(work / "jobs" / f"{name}-f{k}"),
                 "overrides": job_overrides(variant or {}, fold_dirs[k], base_model, f"{name}-f{k}", runs, artifact,
                                            extra, args.item_limit)}
                for k in range(args.fold_limit or args.folds)]

    finished: list[dict[str, Any]] = []
    combined: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()

    def guarded(job: dict[str, Any]) -> None:
        if time.monotonic() > deadline - args.job_seconds:
            print(f"skip (time): {job['variant']} fold {job['fold']}", flush=True)
            return
        result = run_job(job)
        print(f"[{time.monotonic() - deadline + args.budget_seconds:6.0f} s] {job['variant']} fold {job['fold']}: "
              f"{'ok' if result['ok'] else 'FAILED'} in {result['seconds']:.0f} s", flush=True)
        if not result["ok"]:
            print(result["log_tail"], flush=True)
        with lock:  # every finished job is in the JSON at once: a cut-off call loses nothing finished
            finished.append(result)
            save(args.out, collect(finished, variants | combined, args.fold_limit or args.folds, previous))

    def run_all(jobs: list[dict[str, Any]]) -> None:
        with ThreadPoolExecutor(args.workers) as pool_:
            list(pool_.map(guarded, jobs))

    run_all(jobs_for("base", None) + [j for name, v in variants.items() for j in jobs_for(name, v)])
    results = collect(finished, variants, args.fold_limit or args.folds, previous)
    # A later round names its own combinations (--variants); the automatic one belongs to the first.
    merged = combine_winners(results) if previous is None else None
    if merged is not None and merged not in variants.values():
        combined = {"combined": merged}
        run_all(jobs_for("combined", merged))
    results = collect(finished, variants | combined, args.fold_limit or args.folds, previous)
    results["seconds"] = round(args.budget_seconds - (deadline - time.monotonic()), 1)
    save(args.out, results)
    print(table(results))


def _parse_setting(text: str) -> tuple[str, Any]:
    import yaml

    key, _, value = text.partition("=")
    return key, yaml.safe_load(value)


def combine_winners(results: dict[str, Any]) -> dict[str, Any] | None:
    """The config's recipe with, per dimension, the variant that beat it (if any) by the selection score."""
    variants = results["variants"]
    if not variants.get("config", {}).get("modes"):
        return None
    merged: dict[str, Any] = {}
    for names in DIMENSIONS.values():
        scored = [(variants[n]["score"], n) for n in names if variants.get(n, {}).get("modes")]
        best = max(scored, default=None)
        if best and best[0] > variants["config"]["score"]:
            merged.update(VARIANTS[best[1]])
    return merged or None


def collect(finished: list[dict[str, Any]], variants: dict[str, dict[str, Any]], folds: int = FOLDS,
            previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per variant, the pooled out-of-fold figures once all `folds` of it have finished.

    `previous` (an earlier sweep's JSON, same folds) contributes its completed variants that this sweep did
    not run, marked with the round they came from; they take part in the choice like this sweep's own."""
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for result in finished:
        if result["ok"]:
            by_variant.setdefault(result["variant"], []).append(result)
    base = {mode: [p for r in by_variant.get("base", []) for p in r["predictions"][mode]] for mode in MODES}
    this_round = 1 + max((row.get("round", 1) for row in (previous or {}).get("variants", {}).values()), default=1)
    base_complete = len(by_variant.get("base", [])) == folds
    out: dict[str, Any] = {"folds": folds, "fold_seed": SEED, "selection": "(cot accuracy + cot macro-F1) / 2 on the "
                           "pooled out-of-fold predictions (500 train/dev items)", "variants": {}}
    for name in ["base", *variants]:
        runs = sorted(by_variant.get(name, []), key=lambda r: r["fold"])
        row: dict[str, Any] = {"overrides": variants.get(name, {}), "folds_done": len(runs),
                               **({"round": this_round} if previous else {}),
                               "job_seconds": [r["seconds"] for r in runs],
                               "train": [r.get("train") for r in runs] if name != "base" else None}
        if len(runs) == folds:
            row["modes"] = {mode: summarize([p for r in runs for p in r["predictions"][mode]],
                                            base[mode] if base_complete and name != "base" else None)
                            for mode in MODES}
            row["score"] = selection_score(row)
        out["variants"][name] = row
    earlier = (previous or {}).get("variants", {})
    if previous is not None and (previous.get("folds"), previous.get("fold_seed")) != (folds, SEED):
        raise SystemExit(f"--previous sweep used folds={previous.get('folds')} seed={previous.get('fold_seed')}, "
                         f"this one folds={folds} seed={SEED}: its out-of-fold figures cover other splits")
    for name, row in earlier.items():
        if name not in out["variants"] and row.get("modes"):
            out["variants"][name] = {**row, "round": row.get("round", 1)}
    # On a tie the config's own recipe wins (no change without evidence), then the earlier-listed variant.
    order = list(out["variants"])
    candidates = [(row["score"], name == "config", -order.index(name), name)
                  for name, row in out["variants"].items() if name != "base" and row.get("modes")]
    out["chosen"] = max(candidates)[-1] if candidates else None
    out["chosen_overrides"] = out["variants"][out["chosen"]]["overrides"] if out["chosen"] else None
    return out


def save(path: str, results: dict[str, Any]) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(target)


def print_scores(rows: list[dict], paired: list[dict]) -> None:
    for row in rows:
        print(f"{row['artifact']:<12}{row['mode']:<8}{100 * row['accuracy']:6.1f}%  CI {100 * row['ci95'][0]:.1f}-"
              f"{100 * row['ci95'][1]:.1f}  macro-F1 {row['macro_f1']:.3f}  answers {row['predicted']}")
    for c in paired:
        print(f"{c['artifact']} vs {c['versus']} {c['mode']}: {100 * c['difference']:+.1f} "
              f"(paired CI {100 * c['ci95'][0]:+.1f} to {100 * c['ci95'][1]:+.1f})")


GGUF_CHECK_FIELDS = ("artifact", "backend", "benchmark", "mode", "n", "accuracy", "ci95", "macro_f1", "recall",
                     "predicted", "parse_failure_rate", "seconds")


def gguf_check(run: Path, results_path: Path, machine: str) -> dict:
    """Add the run's merged-vs-GGUF eval (benchmarks/pubmedqa_reasoning_gguf.sh) to the results file
    as "gguf_check": the rows, the GGUF's paired comparisons and the export's quality table."""
    evaluated = json.loads(RunDir(run).eval_results.read_text())
    export = RunDir(run).stage_entry("export")
    check = {"machine": machine, "what": "adapter from the GPU run merged here (fp32), exported by llama.cpp; merged and "
             "Q8_0 scored here on the same 500 test items",
             "rows": [{k: row.get(k) for k in GGUF_CHECK_FIELDS} for row in evaluated["results"]],
             "paired": [c for c in evaluated.get("comparisons", []) if c["artifact"].startswith("gguf")],
             "export": {k: export.get(k) for k in ("quality", "verification", "files") if k in export}}
    results = json.loads(results_path.read_text())
    results["gguf_check"] = check
    save(str(results_path), results)
    print_scores(check["rows"], check["paired"])
    return check


def save_base_model(folder: Path) -> str:
    """The embedded GGUF dequantized once into a Hugging Face folder, so the 50 jobs skip the GGUF read."""
    if (folder / "config.json").is_file():
        return str(folder)
    from medtune.config import ModelConfig
    from medtune.modeling import load_base_model
    from medtune.tokenizer import load_tokenizer

    model_cfg = ModelConfig()
    tmp = folder.with_name(folder.name + ".tmp")
    load_base_model(model_cfg).save_pretrained(tmp)
    load_tokenizer(model_cfg).save_pretrained(tmp)
    tmp.replace(folder)
    return str(folder)


# --- choice and record -------------------------------------------------------------------------------


def read_sweep(path: str) -> dict[str, Any]:
    """A sweep's results: a sweep JSON, or the committed results file that holds one under "sweep".
    Exits with a message naming the file when it is missing or holds no chosen variant: a recipe is
    never guessed (issue 24: a missing sweep file once trained another recipe without a word)."""
    file = Path(path)
    if not file.is_file():
        sys.exit(f"pubmedqa_reasoning: {file} does not exist; give a sweep JSON (`sweep --out`) or the committed "
                 "benchmarks/results/pubmedqa_reasoning.json")
    results = json.loads(file.read_text())
    results = results.get("sweep", results)
    if not results.get("chosen_overrides"):
        sys.exit(f"pubmedqa_reasoning: {file} names no chosen variant (chosen_overrides); finish the sweep first")
    return results


def choice(args: argparse.Namespace) -> None:
    results = read_sweep(args.sweep)
    # The whole recipe (the sweep's starting point, then the chosen changes), whatever the config holds now.
    overrides = {"data.files": ["pubmedqa-reasoning:{pool}"], **SWEEP_START, **(results.get("chosen_overrides") or {})}
    pubmedqa = args.pubmedqa
    parts = []
    for key, value in overrides.items():
        if key == "data.files":
            value = [v.format(pool=pubmedqa) for v in value]
        parts.append(f"--set={key}={json.dumps(value)}")
    print("\n".join(parts))  # one argument per line (no shell quoting: read them with mapfile -t)


def record(args: argparse.Namespace) -> None:
    """The committed results file: the sweep table, then per artifact and mode of the final run."""
    sweep_results = read_sweep(args.sweep)
    run_dir = Path(args.run)
    results = json.loads(RunDir(run_dir).eval_results.read_text())
    manifest = RunDir(run_dir).manifest()
    keep = ("artifact", "backend", "benchmark", "mode", "n", "accuracy", "ci95", "macro_f1", "recall", "predicted",
            "gold", "majority_label", "majority_baseline", "majority_macro_f1", "degenerate", "parse_failure_rate",
            "seconds")
    final = {
        "config": str(CONFIG.relative_to(ROOT)),
        "chosen_variant": sweep_results.get("chosen"),
        "overrides": sweep_results.get("chosen_overrides"),
        "rows": [{k: row.get(k) for k in keep} for row in results["results"]],
        "paired": results.get("comparisons", []),
        "stage_seconds": {k: v.get("seconds") for k, v in manifest.get("stages", {}).items()},
        "train": {k: manifest.get("stages", {}).get("train", {}).get(k)
                  for k in ("steps", "train_seconds", "tokens_seen", "train_loss", "val_loss", "first_val_loss")},
    }
    out = {"sweep": sweep_results, "test": final, **({"machine": args.machine} if args.machine else {})}
    save(args.out, out)
    print(table(sweep_results))
    print_scores(final["rows"], final["paired"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sweep")
    s.add_argument("--pubmedqa", default=str(ROOT.parent / "shared" / "data" / "pubmedqa"))
    s.add_argument("--work", default=str(ROOT / "runs" / "pubmedqa-reasoning-sweep"))
    s.add_argument("--base-model", help="HF folder of the base (default: the embedded GGUF, dequantized once)")
    s.add_argument("--folds", type=int, default=FOLDS)
    s.add_argument("--workers", type=int, default=16)
    s.add_argument("--budget-seconds", type=float, default=330, help="start no job after this (minus --job-seconds)")
    s.add_argument("--job-seconds", type=float, default=100, help="expected length of one job")
    s.add_argument("--out", default=str(ROOT / "runs" / "pubmedqa-reasoning-sweep" / "sweep.json"))
    s.add_argument("--variants", nargs="*", choices=list(VARIANTS), help="a subset of the variants (default: all)")
    s.add_argument("--previous", help="an earlier sweep's JSON (same folds): its finished variants join the table "
                   "and the choice; the new rows are marked with the next round number")
    s.add_argument("--set", action="append", help="extra KEY=VALUE for every job (e.g. train.max_steps=2 for a smoke test)")
    s.add_argument("--item-limit", type=int, help="score a seeded subset of each held-out fold (smoke tests)")
    s.add_argument("--fold-limit", type=int, help="run only the first N folds (smoke tests; figures then cover those)")
    c = sub.add_parser("choice")
    c.add_argument("sweep")
    c.add_argument("--pubmedqa", default="../shared/data/pubmedqa")
    r = sub.add_parser("record")
    r.add_argument("--sweep", required=True)
    r.add_argument("--run", required=True)
    r.add_argument("--machine", default="")
    r.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pubmedqa_reasoning.json"))
    g = sub.add_parser("gguf-check", help="add a run's merged-vs-GGUF eval to the results file (pubmedqa_reasoning_gguf.sh)")
    g.add_argument("run")
    g.add_argument("results")
    g.add_argument("--machine", default="")
    st = sub.add_parser("stages")  # internal: one job's stages in one process
    st.add_argument("config")
    st.add_argument("stages", nargs="+")
    args = parser.parse_args()
    if args.command == "sweep":
        sweep(args)
    elif args.command == "choice":
        choice(args)
    elif args.command == "record":
        record(args)
    elif args.command == "gguf-check":
        gguf_check(Path(args.run), Path(args.results), args.machine)
    else:
        stages_command(args.config, args.stages)


if __name__ == "__main__":
    main()
