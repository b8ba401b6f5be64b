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
wheel. Results: benchmarks/results/export_demo.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "export_demo.json"


def setup_figures(fresh: bool) -> dict:
    from medtune import llamacpp

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
    from medtune.config import load_config

    config = load_config(REPO / "configs" / "demo.yaml", [f"output_dir={scratch}"])
    target = config.run_dir
    target.mkdir(parents=True)
    if (demo / "data" / "val").is_dir():
        shutil.copytree(demo / "data" / "val", target / "data" / "val")
    if (demo / "merged" / "config.json").is_file():
        shutil.copytree(demo / "merged", target / "merged")
        return config, f"{demo}/merged (the demo run's trained adapter, merged)"
    import torch

    from medtune.modeling import load_base_model
    from medtune.tokenizer import load_tokenizer

    load_base_model(config.model, dtype=torch.float32).save_pretrained(target / "merged")
    load_tokenizer(config.model).save_pretrained(target / "merged")
    return config, "base SmolLM2-135M-Instruct saved as a merged folder (no merged demo model existed yet)"


def _cpu_seconds() -> float:
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh-setup", action="store_true", help="Time the llama.cpp set-up on an empty cache (minutes).")
    parser.add_argument("--note", default="", help="How the run's adapter was made (stored with the result).")
    parser.add_argument("--run", type=Path, default=REPO / "runs" / "demo", help="Demo run folder holding merged/ (default: runs/demo).")
    args = parser.parse_args()
    from medtune.export import export_gguf

    result: dict = {"cores": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()}
    result.update(setup_figures(args.fresh_setup))
    with tempfile.TemporaryDirectory(prefix="medtune-export-bench-") as scratch:
        config, source = prepare_run(Path(scratch), args.run)
        result["merged_source"] = source + (f"; {args.note}" if args.note else "")
        result["load_average_before"] = round(os.getloadavg()[0], 2)
        cpu_before = _cpu_seconds()
        started = time.perf_counter()
        export = export_gguf(config)
        result["export_seconds"] = round(time.perf_counter() - started, 2)
        # CPU time (this process + the converter subprocess): what the export costs on idle cores,
        # whereas export_seconds also includes waiting for cores that other work holds.
        result["export_cpu_seconds"] = round(_cpu_seconds() - cpu_before, 2)
        result["load_average_after"] = round(os.getloadavg()[0], 2)
    result["f16_top1_agreement"] = export.f16_top1_agreement
    result["f16_size_bytes"] = export.files[0].size_bytes
    result["quants"] = {
        f.type: {"top1_agreement": f.top1_agreement, "mean_kl": f.mean_kl, "size_bytes": f.size_bytes,
                 "bits_per_weight": f.bits_per_weight, "answer_tokens": f.answer_tokens, "stopped_on_eos": f.stopped_on_eos}
        for f in export.files[1:]
    }
    result["f16_answer_tokens"] = export.files[0].answer_tokens
    result["f16_stopped_on_eos"] = export.files[0].stopped_on_eos
    result["prompts"], result["positions"], result["prompt_source"] = export.prompts, export.positions, export.prompt_source
    result["n_threads"] = export.n_threads
    result["timings"] = export.timings
    result["recorded_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("export_seconds", "export_cpu_seconds", "setup_seconds", "f16_top1_agreement")}, indent=2))
    for name, q in result["quants"].items():
        print(f"{name}: top-1 {q['top1_agreement']:.2%}, mean KL {q['mean_kl']:.4f}, {q['size_bytes'] / 2**20:.1f} MiB")
    print(f"wrote {RESULT}", file=sys.stderr)


if __name__ == "__main__":
    main()
