"""Cross-check medtune's PubMedQA scoring against EleutherAI's lm-evaluation-harness.

Each model is saved once as a full-precision Hugging Face folder, and both tools score that folder
(same weights, fp32, CPU) on the same 500 test items read from PubMedQA's original release files:

- lm-eval: its built-in `pubmedqa` task (prompt, choices, target, acc) on the local files, through
  our task `benchmarks/lm_eval_tasks/pubmedqa_local.yaml` and its `hf` backend, per-item results
  from --log_samples;
- medtune, prompt_style chat (its default: chat template, "The answer is" + label) and prompt_style
  lm_eval (lm-eval's prompt and scoring, reproduced).

Per model and medtune prompt style it records both accuracies, the fraction of items on which the
two tools give the same answer, per-class recall, macro-F1 and the answer spread of each, and (for
the lm_eval style) how far the per-choice log-likelihoods of the two tools are apart. Rows are
merged into the JSON by model: running it for another model adds that model's rows and keeps the
others.

    python benchmarks/eval_vs_lm_eval.py                                   # the base model
    python benchmarks/eval_vs_lm_eval.py --models runs/pubmedqa-smollm2    # a run (its merged/ model)
    python benchmarks/eval_vs_lm_eval.py --models runs/x/adapter some/hf-folder --limit 50

--models takes embedded names, hub ids, .gguf files (dequantized like model.base), Hugging Face
folders, PEFT adapter folders (merged into their base in fp32 first) and run directories.
Needs `pip install -e ".[lm_eval]"`; runs offline (HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from medtune.rundir import RunDir, is_run_dir

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TASKS_DIR = HERE / "lm_eval_tasks"
TASK = "pubmedqa_local"
LABELS = ("yes", "no", "maybe")
BAR_POINTS, BAR_AGREEMENT = 0.01, 0.95


def load() -> list[float]:
    """The 1/5/15-minute load averages (the machine's other users show up here)."""
    return [round(x, 2) for x in os.getloadavg()]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text.rstrip("/")).strip("-")[-80:] or "model"


def materialise(model: str, work: Path) -> tuple[str, Path]:
    """(label, an HF folder with fp32 weights and the tokenizer) for any model form medtune takes."""
    path = Path(model).expanduser()
    if path.is_dir() and is_run_dir(path) and RunDir(path).merged.is_dir():
        return f"{path.name}/merged", RunDir(path).merged  # a run directory: its merged model
    if path.is_dir() and (path / "config.json").is_file():
        return path.name, path
    import torch

    from medtune.config import ModelConfig
    from medtune.modeling import load_base_model
    from medtune.tokenizer import load_tokenizer

    folder = work / f"hf-{slug(model)}"
    stamp = {"model": model, "mtime": max((p.stat().st_mtime for p in path.rglob("*")), default=0) if path.is_dir() else
             path.stat().st_mtime if path.exists() else 0}
    if (folder / "source.json").is_file() and json.loads((folder / "source.json").read_text()) == stamp:
        label = f"{path.parent.name}/{path.name}" if (path / "adapter_config.json").is_file() else model
        return label, folder  # saved by an earlier run from the same, unchanged source
    if path.is_dir() and (path / "adapter_config.json").is_file():
        from peft import PeftModel

        base = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
        cfg = ModelConfig(base=base)
        merged = PeftModel.from_pretrained(load_base_model(cfg, dtype=torch.float32), str(path)).merge_and_unload()
        tokenizer = load_tokenizer(ModelConfig(base=str(path))) if (path / "tokenizer_config.json").is_file() else load_tokenizer(cfg)
        label = f"{path.parent.name}/{path.name}"
    else:
        cfg = ModelConfig(base=model)
        merged, tokenizer, label = load_base_model(cfg, dtype=torch.float32), load_tokenizer(cfg), model
    folder.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "source.json").write_text(json.dumps(stamp))
    return label, folder


def item_indices(pubmedqa: Path, limit: int | None, seed: int) -> tuple[list[str], list[int] | None]:
    """The ids medtune scores (its seeded subset) and their positions in test_ground_truth.json's order,
    which is the order our lm-eval task reads, so that --samples picks the same items."""
    from medtune.tasks import load_items

    every = [item.id for item in load_items("pubmedqa", pubmedqa)]
    chosen = [item.id for item in load_items("pubmedqa", pubmedqa, limit, seed)]
    position = {item_id: k for k, item_id in enumerate(every)}
    return chosen, None if limit is None else [position[i] for i in chosen]


def run_medtune(folder: Path, pubmedqa: Path, style: str, limit: int | None, seed: int, batch_size: int,
                out: Path) -> dict[str, Any]:
    from medtune.config import BenchmarkSpec, EvalConfig
    from medtune.eval.stage import evaluate_model

    spec = BenchmarkSpec(name="pubmedqa", path=str(pubmedqa), limit=limit)
    cfg = EvalConfig(benchmarks=[spec], device="cpu", dtype="fp32", batch_size=batch_size, prompt_style=style,
                     subset_seed=seed)
    before, started = load(), time.perf_counter()
    result = evaluate_model(str(folder), [spec], cfg, out)
    seconds = time.perf_counter() - started
    records = [json.loads(line) for line in next((out / "predictions").glob("*.jsonl")).read_text().splitlines()]
    return {"row": result.rows[0].to_json(), "seconds": round(seconds, 1), "load_before": before, "load_after": load(),
            "items": {r["id"]: r for r in records}}


def lm_eval_command(folder: Path, pubmedqa: Path, indices: list[int] | None, batch_size: int, out: Path) -> list[str]:
    command = [
        sys.executable, "-m", "lm_eval", "run", "--model", "hf",
        "--model_args", f"pretrained={folder},dtype=float32", "--device", "cpu",
        "--tasks", TASK, "--include_path", str(TASKS_DIR), "--batch_size", str(batch_size),
        "--log_samples", "--output_path", str(out), "--metadata", json.dumps({"pubmedqa_dir": str(pubmedqa)}),
    ]
    if indices is not None:
        command += ["--samples", json.dumps({TASK: indices})]
    return command


def run_lm_eval(folder: Path, pubmedqa: Path, indices: list[int] | None, batch_size: int, out: Path) -> dict[str, Any]:
    command = lm_eval_command(folder, pubmedqa, indices, batch_size, out)
    # A finished run over the same model folder is reused when it covered these items: the same
    # command, or one over every item (--limit later picks a subset of those).
    stamp = out / "medtune-run.json"
    done_before = json.loads(stamp.read_text())["command"] if stamp.is_file() else None
    if done_before in (command, lm_eval_command(folder, pubmedqa, None, batch_size, out)):
        seconds, before, after = (json.loads(stamp.read_text())[k] for k in ("seconds", "load_before", "load_after"))
    else:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        before, started = load(), time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        seconds, after = round(time.perf_counter() - started, 1), load()
        if done.returncode != 0:
            sys.exit(f"lm-eval failed ({done.returncode}):\n{shlex.join(command)}\n{done.stderr[-4000:]}")
        stamp.write_text(json.dumps({"command": command, "seconds": seconds, "load_before": before, "load_after": after}))
    results_file = max(out.rglob("results_*.json"), key=lambda p: p.stat().st_mtime)
    samples_file = max(out.rglob(f"samples_{TASK}_*.jsonl"), key=lambda p: p.stat().st_mtime)
    accuracy = json.loads(results_file.read_text())["results"][TASK]["acc,none"]
    items = {}
    for line in samples_file.read_text().splitlines():
        sample = json.loads(line)
        logliks = [float(resp[0]) for resp in sample["filtered_resps"]]  # one [loglik, is_greedy] per choice
        best = LABELS[max(range(len(LABELS)), key=lambda k: logliks[k])]
        items[str(sample["doc"]["pubid"])] = {"answer": sample["doc"]["final_decision"], "predicted": best,
                                              "acc": float(sample["acc"]), "scores": dict(zip(LABELS, logliks))}
    return {"accuracy": accuracy, "seconds": seconds, "load_before": before, "load_after": after,
            "items": items, "command": shlex.join(command).replace(str(REPO) + "/", "")}


def class_figures(answers: list[str], predicted: list[str]) -> dict[str, Any]:
    from medtune.eval.metrics import class_report

    report = class_report(answers, predicted, LABELS)
    return {key: report[key] for key in ("macro_f1", "recall", "predicted")}


def compare(ids: list[str], medtune: dict[str, Any], lm_eval: dict[str, Any]) -> dict[str, Any]:
    mine = [medtune["items"][i] for i in ids]
    theirs = [lm_eval["items"][i] for i in ids]
    answers = [m["answer"] for m in mine]
    assert answers == [t["answer"] for t in theirs], "the two tools read different gold labels"
    same = sum(m["predicted"] == t["predicted"] for m, t in zip(mine, theirs))
    lm_eval_accuracy = sum(t["acc"] for t in theirs) / len(theirs)  # over these items (a reused run may hold more)
    if len(ids) == len(lm_eval["items"]):
        assert abs(lm_eval_accuracy - lm_eval["accuracy"]) < 1e-9, "lm-eval's per-item acc does not add up to its acc"
    gaps = [abs(m["scores"][label] - t["scores"][label]) for m, t in zip(mine, theirs) for label in LABELS]
    row = medtune["row"]
    return {
        "n": len(ids),
        "medtune_accuracy": row["accuracy"],
        "lm_eval_accuracy": round(lm_eval_accuracy, 4),
        "item_agreement": round(same / len(ids), 4),
        "medtune": {"ci95": row["ci95"], **class_figures(answers, [m["predicted"] for m in mine])},
        "lm_eval": class_figures(answers, [t["predicted"] for t in theirs]),
        "loglik_abs_difference": {"max": round(max(gaps), 5), "mean": round(sum(gaps) / len(gaps), 5)},
        "seconds": {"medtune": medtune["seconds"], "lm_eval": lm_eval["seconds"]},
        "load_1_5_15min": {"medtune": [medtune["load_before"], medtune["load_after"]],
                           "lm_eval": [lm_eval["load_before"], lm_eval["load_after"]]},
    }


def versions() -> dict[str, str]:
    from importlib.metadata import version

    commit = os.environ.get("MEDTUNE_COMMIT") or subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    found = {name: version(name) for name in ("lm_eval", "torch", "transformers", "datasets", "peft")}
    return {"medtune_commit": commit, "python": platform.python_version(), **found}


def write(out: Path, rows: list[dict[str, Any]]) -> None:
    result = {
        "what": "PubMedQA test split (original release files), medtune's loglik scoring vs lm-evaluation-harness's "
                "pubmedqa task on the same items and the same fp32 weights on CPU",
        "bar": "prompt_style lm_eval: |medtune - lm_eval| <= 1 point and item agreement >= 95%",
        "rows": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["embedded:smollm2-135m-instruct"])
    parser.add_argument("--pubmedqa", default=str(REPO.parent / "shared" / "data" / "pubmedqa"))
    parser.add_argument("--limit", type=int, default=None, help="a seeded subset of N items (default: all 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--styles", nargs="+", default=["chat", "lm_eval"], choices=["chat", "lm_eval"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--work", default="/tmp/medtune-eval-vs-lm-eval", help="model folders and raw outputs")
    parser.add_argument("--out", default=str(HERE / "results" / "eval_vs_lm_eval.json"))
    parser.add_argument("--note", default="", help="where and how it ran (kept with the rows of this run)")
    parser.add_argument("--merge-from", help="only merge the rows of another run's JSON (e.g. from the device) into --out")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    pubmedqa, work, out = Path(args.pubmedqa).resolve(), Path(args.work), Path(args.out)
    saved = json.loads(out.read_text()) if out.is_file() else {}
    rows = saved.get("rows", [])
    if args.merge_from:
        incoming = json.loads(Path(args.merge_from).read_text())["rows"]
        keys = {(r["model"], r["prompt_style"]) for r in incoming}
        rows = [r for r in rows if (r["model"], r["prompt_style"]) not in keys] + incoming
        write(out, rows)
        args.models = []
    else:
        ids, indices = item_indices(pubmedqa, args.limit, args.seed)
    for model in args.models:
        label, folder = materialise(model, work)
        print(f"{label}: scoring {folder} ({len(ids)} items)", flush=True)
        lm_eval = run_lm_eval(folder, pubmedqa, indices, args.batch_size, work / f"lm_eval-{slug(label)}")
        print(f"  lm-eval acc {lm_eval['accuracy']:.4f} in {lm_eval['seconds']} s", flush=True)
        new = []
        for style in args.styles:
            medtune = run_medtune(folder, pubmedqa, style, args.limit, args.seed, args.batch_size,
                                  work / f"medtune-{slug(label)}-{style}")
            new.append({"model": label, "source": model, "prompt_style": style, **compare(ids, medtune, lm_eval),
                        "lm_eval_command": lm_eval["command"], "machine": f"{platform.node()}, {os.cpu_count()} cores",
                        "date": time.strftime("%Y-%m-%d"), "limit": args.limit, "versions": versions(),
                        "note": args.note})
            print(f"  medtune {style}: acc {medtune['row']['accuracy']:.4f} in {medtune['seconds']} s, "
                  f"same answer as lm-eval on {new[-1]['item_agreement']:.1%}", flush=True)
            rows = [r for r in rows if not (r["model"] == label and r["prompt_style"] == style)] + [new[-1]]
            write(out, rows)  # after every style: an interrupted run keeps what it finished

    print(f"\n{'model':<34}{'medtune style':<15}{'n':>5}{'medtune %':>11}{'lm-eval %':>11}{'same answer':>13}"
          f"{'macro-F1 m/l':>15}  bar")
    for r in rows:
        gap = abs(r["medtune_accuracy"] - r["lm_eval_accuracy"])
        bar = ("met" if gap <= BAR_POINTS and r["item_agreement"] >= BAR_AGREEMENT else "MISSED") \
            if r["prompt_style"] == "lm_eval" else "(prompts differ by design)"
        print(f"{r['model'][:33]:<34}{r['prompt_style']:<15}{r['n']:>5}{100 * r['medtune_accuracy']:>10.1f}%"
              f"{100 * r['lm_eval_accuracy']:>10.1f}%{100 * r['item_agreement']:>12.1f}%"
              f"{r['medtune']['macro_f1']:>8.3f}/{r['lm_eval']['macro_f1']:.3f}  {bar}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
