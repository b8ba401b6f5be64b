"""Benchmark the export stage on the demo model and the one-time llama.cpp set-up.

    python benchmarks/export_bench.py                 # export timing; set-up time from the cached build
    python benchmarks/export_bench.py --fresh-setup   # also time scripts/setup-llama-cpp.sh on an empty cache

Export: the demo run's merged model (runs/demo/merged, made by `medtune merge configs/demo.yaml`)
is copied with its validation split into a scratch run, and `export_gguf` (F16 + Q4_K_M + Q5_K_M +
Q8_0 with the full verification) is timed there, so runs/demo is never touched. Without a merged
demo model, a merged folder is made from the base SmolLM2 (load_base_model + save) and the result
says so (`merged_source`). Set-up: by default the build time recorded by the set-up script when
it built the cached wheel (`build.json`); --fresh-setup runs the whole script on an empty cache
(reusing the already downloaded sdist, so the download is not timed) and reinstalls the same
wheel. Results: appended to benchmarks/results/export_demo.json (medtune.benchmarking's schema),
one row per GGUF file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from medtune import llamacpp
from medtune.benchmarking import append_run, print_table
from medtune.config import load_config
from medtune.export import ExportResult, export_gguf
from medtune.modeling import load_base_model
from medtune.rundir import RunDir
from medtune.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
BENCHMARK = "export_demo"


def setup_figures(fresh: bool) -> dict:
    figures: dict = {}
    started = time.perf_counter()
    subprocess.run(["bash", str(REPO / "scripts" / "setup-llama-cpp.sh")], check=True, capture_output=True)
    figures["setup_cached_seconds"] = round(time.perf_counter() - started, 2)
    info = llamacpp.runtime_build_info() or {}
    figures["llama_cpp_python"] = llamacpp.runtime_version()
    figures["cmake_args"] = info.get("cmake_args")
    if fresh:
        sdist = llamacpp.cache_dir() / "sdist" / f"llama_cpp_python-{llamacpp.LLAMA_CPP_PYTHON_VERSION}.tar.gz"
        with tempfile.TemporaryDirectory(prefix="medtune-fresh-cache-") as cache:
            env = {**os.environ, "MEDTUNE_CACHE_DIR": cache, "MEDTUNE_LLAMA_SDIST": str(sdist), "MEDTUNE_LLAMA_REBUILD": "1"}
            started = time.perf_counter()
            subprocess.run(["bash", str(REPO / "scripts" / "setup-llama-cpp.sh")], check=True, env=env)
            figures["setup_seconds"] = round(time.perf_counter() - started, 1)
        figures["setup_source"] = "measured now: scripts/setup-llama-cpp.sh on an empty cache (sdist already downloaded)"
        # The fresh run installed its own (identical-flags) wheel; put the cached one back.
        subprocess.run(["bash", str(REPO / "scripts" / "setup-llama-cpp.sh")], check=True, capture_output=True,
                       env={**os.environ, "MEDTUNE_LLAMA_REBUILD": ""})
    else:
        figures["setup_seconds"] = info.get("build_seconds")
        figures["setup_source"] = "build time recorded by scripts/setup-llama-cpp.sh when it built the cached wheel"
    return figures


def prepare_run(scratch: Path, demo: Path) -> tuple[object, str]:
    """A scratch copy of the demo run with a merged model; returns (RunConfig, where the merged model came from)."""
    import torch

    config = load_config(REPO / "configs" / "demo.yaml", [f"output_dir={scratch}"])
    source, target = RunDir(demo), RunDir.of(config)
    target.root.mkdir(parents=True)
    if source.split("val").is_dir():
        shutil.copytree(source.split("val"), target.split("val"))
    if (source.merged / "config.json").is_file():
        shutil.copytree(source.merged, target.merged)
        return config, f"{source.merged} (the demo run's trained adapter, merged)"
    load_base_model(config.model, dtype=torch.float32).save_pretrained(target.merged)
    load_tokenizer(config.model).save_pretrained(target.merged)
    return config, "base SmolLM2-135M-Instruct saved as a merged folder (no merged demo model existed yet)"


def _cpu_seconds() -> float:
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def file_rows(export: ExportResult) -> list[dict]:
    """One row per GGUF file: its agreement, KL, size and test answer."""
    return [{"type": f.type, "versus": f.versus, "top1_agreement": f.top1_agreement, "mean_kl": f.mean_kl,
             "size_bytes": f.size_bytes, "bits_per_weight": f.bits_per_weight, "answer_tokens": f.answer_tokens,
             "stopped_on_eos": f.stopped_on_eos, "make_seconds": f.make_seconds} for f in export.files]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh-setup", action="store_true", help="Time the llama.cpp set-up on an empty cache (minutes).")
    parser.add_argument("--note", default="", help="How the run's adapter was made (stored with the result).")
    parser.add_argument("--run", type=Path, default=REPO / "runs" / "demo", help="Demo run folder holding merged/ (default: runs/demo).")
    args = parser.parse_args()

    figures: dict = setup_figures(args.fresh_setup)
    with tempfile.TemporaryDirectory(prefix="medtune-export-bench-") as scratch:
        config, source = prepare_run(Path(scratch), args.run)
        figures["merged_source"] = source + (f"; {args.note}" if args.note else "")
        figures["load_average_before"] = round(os.getloadavg()[0], 2)
        cpu_before = _cpu_seconds()
        started = time.perf_counter()
        export = export_gguf(config, RunDir.of(config))
        figures["export_seconds"] = round(time.perf_counter() - started, 2)
        # CPU time (this process + the converter subprocess): what the export costs on idle cores,
        # whereas export_seconds also includes waiting for cores that other work holds.
        figures["export_cpu_seconds"] = round(_cpu_seconds() - cpu_before, 2)
        figures["load_average_after"] = round(os.getloadavg()[0], 2)
    figures.update(f16_top1_agreement=export.f16_top1_agreement, prompts=export.prompts, positions=export.positions,
                   prompt_source=export.prompt_source, n_threads=export.n_threads, timings=export.timings)
    rows = file_rows(export)
    append_run(BENCHMARK, rows, **figures)
    print_table(rows, ["type", "top1_agreement", "mean_kl", "size_bytes", "answer_tokens", "stopped_on_eos"],
                title=f"export of the demo model: {figures['export_seconds']} s ({figures['export_cpu_seconds']} CPU s); "
                      f"llama.cpp set-up {figures['setup_seconds']} s")


if __name__ == "__main__":
    main()
