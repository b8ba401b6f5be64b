"""`python -m benchmarks.peers make-base | run | table` (see the package docstring)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

from medtune.benchmarking import append_run, command_line, versions

from . import __doc__ as DESCRIPTION
from .systems import SYSTEMS
from .table import BENCHMARK, calls_rows, finish, read_rows_file, recorded_calls, table_lines
from .workload import ACCUMULATION, LORA_SHAPES, N_EXAMPLES, SHAPES, log, make_base, peak_gib

PEER_PACKAGES = ("trl", "unsloth", "unsloth_zoo", "bitsandbytes", "liger_kernel", "triton", "flash-attn-4",
                 "nvidia-cutlass-dsl")


def run(args) -> None:
    """One system's row, appended to --out as soon as it ends (a failed arm is an error row), then
    its profile as a second row."""
    row: dict = {"system": args.system, "shape": args.shape, "lora": args.lora, "tag": args.tag or args.system,
                 "quantize_base": args.quantize, "date": time.strftime("%Y-%m-%d"),
                 "machine": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                 "command": os.environ.get("PEERS_COMMAND"), "overrides": args.set}
    started = time.perf_counter()
    log(f"== {row['tag']}: {args.system} {args.shape} {args.lora} quantize={args.quantize} set={args.set}")
    try:
        SYSTEMS[args.system](args, row)
        finish(row)
        log(f"  {row['tag']}: {row.get('real_tokens_per_second', 0):,.0f} real tok/s, MFU {100 * row.get('mfu', 0):.1f}%, "
            f"peak {row.get('peak_gib', 0):.1f} GiB, held-out loss {row.get('loss_at_equal_tokens')}, "
            f"tokens trained {row.get('real_tokens_trained')}")
    except BaseException as exc:  # noqa: BLE001 (a failed arm is a row, not a lost run)
        row["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        row["traceback"] = traceback.format_exc()[-3000:]
        row["peak_gib"] = round(peak_gib(), 2)
        log(row["traceback"])
    row["wall_s"] = round(time.perf_counter() - started, 1)
    row["versions"] = versions(PEER_PACKAGES)
    profiler = row.pop("_profiler", None)
    with open(args.out, "a") as handle:
        handle.write(json.dumps(row) + "\n")
    if profiler is not None and hasattr(profiler, "prof"):
        _append_profile(args.out, row, profiler)
    if "error" in row:
        sys.exit(1)


def _append_profile(out: Path, row: dict, profiler) -> None:
    # A second row, after the first is on disk: a slow or failed summary cannot cost the measurement.
    entry = {"tag": f"{row['tag']}-profile", "profile_of": row["tag"], "shape": row["shape"]}
    try:
        entry["profile"] = profiler.summarize()
    except Exception as exc:  # noqa: BLE001
        entry["error"] = f"profile summary failed: {type(exc).__name__}: {exc}"[:1000]
    with open(out, "a") as handle:
        handle.write(json.dumps(entry) + "\n")


def table(args) -> None:
    """Print every recorded call's rows (and the new files'), the same-call ratios and the bars;
    --append records each new file as the next call in the results file."""
    calls = recorded_calls(args.results_dir)
    first_new = max((c["call"] for c in calls), default=0) + 1
    new = [{"call": first_new + i, "rows": read_rows_file(path)} for i, path in enumerate(args.rows)]
    lines, ratios, _ = table_lines(calls_rows(calls + new))
    print("\n".join(lines))
    for call in new if args.append else []:
        commands = list(dict.fromkeys(r["command"] for r in call["rows"] if r.get("command")))
        measured = next((r for r in call["rows"] if r.get("machine")), {})
        # The rows were measured on the GPU machine, not on the one recording them: its card and versions.
        append_run(BENCHMARK, call["rows"], results_dir=args.results_dir, command=commands[-1] if commands else command_line(),
                   machine={"gpu": measured.get("machine"), "date": measured.get("date")},
                   versions=measured.get("versions") or versions(PEER_PACKAGES), call=call["call"],
                   ratios={k: v for k, v in ratios.items() if v["call"] == call["call"]},
                   mfu_definition="4 * N FLOPs per real token / 790e12 FLOP/s (H200 dense bf16 measured)")
        print(f"recorded as call {call['call']} in {BENCHMARK}.json")


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = main.add_subparsers(dest="command", required=True)
    base = sub.add_parser("make-base", help="create the shared random-weight base once")
    base.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    base.add_argument("--dir", required=True)
    base.add_argument("--tiny", action="store_true")
    add_run_arguments(sub.add_parser("run", help="one system's row, appended to --out"))
    tab = sub.add_parser("table", help="print the table and ratios; --append records the new files as calls")
    tab.add_argument("rows", nargs="*", type=Path, help="one JSONL file per new device call (ratios stay within a call)")
    tab.add_argument("--append", action="store_true", help="append each file as a new call to the results file")
    tab.add_argument("--results-dir", type=Path, default=None, help="default: benchmarks/results")
    return main


def add_run_arguments(arm: argparse.ArgumentParser) -> None:
    arm.add_argument("--system", choices=sorted(SYSTEMS), required=True)
    arm.add_argument("--base", help="folder from make-base (omit for an in-memory random base: medtune only)")
    arm.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    arm.add_argument("--lora", choices=sorted(LORA_SHAPES), default="qkvo-r8")
    arm.add_argument("--quantize", choices=["none", "nf4"], default="none")
    arm.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="medtune TrainConfig field")
    arm.add_argument("--trainer-arg", action="append", default=[], metavar="NAME=JSON",
                     help="medtune: a TrainingArguments field over medtune's choice (on/off measurements)")
    arm.add_argument("--inductor", action="append", default=[], metavar="NAME=JSON",
                     help="medtune: a torch._inductor.config setting, e.g. coordinate_descent_tuning=true")
    arm.add_argument("--no-input-cast", action="store_true",
                     help="medtune: LoRA inputs stay bf16 under autocast (PEFT's cast_input_dtype_enabled off)")
    arm.add_argument("--fuse-frozen-mlp", action="store_true",
                     help="medtune: fuse each frozen gate/up pair into one GEMM too (fuse_projections(frozen_mlp=True))")
    arm.add_argument("--tag", help="row name in the table")
    arm.add_argument("--out", type=Path, required=True)
    arm.add_argument("--examples", type=int, default=N_EXAMPLES)
    arm.add_argument("--warmup", type=int, default=4, help="optimizer steps before timing")
    arm.add_argument("--steps", type=int, default=8, help="timed optimizer steps")
    arm.add_argument("--accumulation", type=int, default=ACCUMULATION)
    arm.add_argument("--tokens-per-micro-batch", type=int, default=None)
    arm.add_argument("--budget-fill", type=float, default=0.999, help="seed: share of the nominal token budget to match")
    arm.add_argument("--profile", action="store_true", help="medtune: profile the last warm-up step")
    arm.add_argument("--no-heldout", action="store_true")
    arm.add_argument("--unsloth-checkpointing", choices=["off", "on", "unsloth"], default="off")
    arm.add_argument("--lora-dropout", type=float, default=None,
                     help="over the adapter's 0.05 (0: Unsloth's fast LoRA path; same for every system)")
    arm.add_argument("--trl-attention", default="sdpa")
    arm.add_argument("--tiny", action="store_true")


def main() -> None:
    args = parser().parse_args()
    if args.command == "make-base":
        if args.tiny:
            args.shape = "tiny"
        make_base(args)
    elif args.command == "run":
        if args.tiny:
            args.shape = "tiny"
            args.examples = min(args.examples, 96)
        run(args)
    else:
        table(args)


if __name__ == "__main__":
    main()
