"""Load on `medtune serve`: N concurrent chat requests (N = 1, 4, 16) to the served Q4_K_M demo model.

    python benchmarks/serve_bench.py                       # runs/demo/gguf/demo-Q4_K_M.gguf
    python benchmarks/serve_bench.py --target runs/demo --model Q4_K_M --concurrency 1 4 16

The server is the real command (`python -m medtune.cli serve TARGET --port 0`, llama.cpp's own
server behind medtune's front), started once. Each round sends N requests at the same moment
through the official `openai` client, one thread per request, streaming, each with a different
question (medtune's held-out sample questions, each round continuing the list where the last
stopped, so llama.cpp's reuse of the previous prompt's KV cache never gives a round a repeated
question), greedy, `max_tokens` fixed; the model may
stop earlier at its end-of-turn token, so tokens are counted from what came back (the streamed
text re-tokenized with the file's vocabulary; the stream carries no usage). Per round:
completion tokens/s over the round's wall time, p50/p95 of the request latency (send -> last
token) and of the time to the first token, and `failed` = requests that raised or did not finish
within --request-timeout (a hang). The machine's load average is recorded beside the figures:
the cores are shared. Results: benchmarks/results/serve_bench.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "serve_bench.json"
DEFAULT_TARGET = REPO / "runs" / "demo" / "gguf" / "demo-Q4_K_M.gguf"


@contextlib.contextmanager
def served(target: str | Path, *args: str, timeout: float = 300) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run `medtune serve TARGET ARGS --port 0`; yield (base URL, process); stop it with SIGINT."""
    command = [sys.executable, "-m", "medtune.cli", "serve", str(target), *args, "--port", "0"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "300"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    found: dict[str, str] = {}
    ready = threading.Event()

    def read() -> None:
        for line in process.stdout:
            sys.stderr.write(f"  [serve] {line}")
            match = re.search(r"serving on (http://\S+)", line)
            if match:
                found["url"] = match.group(1)
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(timeout) or "url" not in found:
        process.kill()
        raise SystemExit(f"medtune serve {target} did not start (exit {process.poll()})")
    try:
        yield found["url"], process
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def questions() -> list[str]:
    from medtune.tasks.prompts import user_message
    from medtune.tasks.registry import load_items

    return [user_message(item, "cot") for item in load_items("medtune_sample", "builtin:reasonmed-heldout")]


def one_request(client, model: str, question: str, max_tokens: int, start: threading.Barrier) -> dict:
    start.wait()
    began = time.perf_counter()
    first, pieces = None, []
    try:
        stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                                max_tokens=max_tokens, temperature=0, stream=True)
        for chunk in stream:
            for choice in chunk.choices:
                if choice.delta.content:
                    first = first or time.perf_counter()
                    pieces.append(choice.delta.content)
        ended = time.perf_counter()
        return {"ok": True, "latency_s": ended - began, "ttft_s": (first or ended) - began, "text": "".join(pieces),
                "ended": ended, "began": began}
    except Exception as exc:  # noqa: BLE001 - a failed or hung request is a figure here, not a crash
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300], "began": began, "ended": time.perf_counter()}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def run_round(url: str, model: str, n: int, prompts: list[str], max_tokens: int, request_timeout: float, vocab) -> dict:
    """N requests released together by a barrier, one question each (prompts[i])."""
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=request_timeout)
    barrier = threading.Barrier(n)
    load_before = os.getloadavg()[0]
    with ThreadPoolExecutor(max_workers=n) as pool:
        futures = [pool.submit(one_request, client, model, prompts[i], max_tokens, barrier) for i in range(n)]
        done = [f.result() for f in futures]
    ok = [d for d in done if d["ok"]]
    wall = max(d["ended"] for d in done) - min(d["began"] for d in done)
    tokens = sum(_count(vocab, d["text"]) for d in ok)
    prompt_tokens = sum(vocab.chat({"messages": [{"role": "user", "content": prompts[i]}]})
                        for i, d in enumerate(done) if d["ok"])
    latencies = sorted(d["latency_s"] for d in ok)
    ttfts = sorted(d["ttft_s"] for d in ok)
    return {
        "concurrency": n,
        "requests": n,
        "failed": n - len(ok),
        "errors": [d["error"] for d in done if not d["ok"]],
        "completion_tokens": tokens,
        "prompt_tokens": prompt_tokens,
        "wall_s": round(wall, 2),
        "tokens_per_second": round(tokens / wall, 1) if wall > 0 else None,
        "prompt_and_completion_tokens_per_second": round((tokens + prompt_tokens) / wall, 1) if wall > 0 else None,
        "p50_s": _round(percentile(latencies, 50)),
        "p95_s": _round(percentile(latencies, 95)),
        "ttft_p50_s": _round(percentile(ttfts, 50)),
        "ttft_p95_s": _round(percentile(ttfts, 95)),
        "load_1min_before": round(load_before, 2),
        "load_1min_after": round(os.getloadavg()[0], 2),
    }


def _count(vocab, text: str) -> int:
    return len(vocab.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)) if text else 0


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default=str(DEFAULT_TARGET), help="what `medtune serve` serves (default: the demo's Q4_K_M file)")
    parser.add_argument("--model", default=None, help="model id to request (default: the server's first)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: medtune's automatic choice)")
    parser.add_argument("--request-timeout", type=float, default=600.0, help="seconds after which a request counts as hung")
    parser.add_argument("--output", default=str(RESULT))
    args = parser.parse_args()

    from medtune import llamacpp

    target = Path(args.target)
    if not target.exists():
        raise SystemExit(f"{target} does not exist: run `medtune run configs/demo.yaml` first")
    from medtune.serve.gguf import PromptCounter

    threads = args.threads or llamacpp.default_threads()
    # Completion tokens: the streamed text re-tokenized with the file's vocabulary (llama-cpp-python's
    # stream carries no usage); a vocabulary-only load, so the measuring costs no model memory.
    vocab = PromptCounter(target if target.is_file() else sorted((target / "gguf").glob("*Q4_K_M.gguf"))[0])

    prompts = questions()
    load_start = os.getloadavg()
    rows = []
    with served(target, "--threads", str(threads), "--n-ctx", "2048") as (url, _):
        import openai

        model = args.model or openai.OpenAI(base_url=f"{url}/v1", api_key="none").models.list().data[0].id
        # Warm-up (page cache, first load) on a question of its own: llama.cpp reuses the KV cache of the
        # previous prompt's common prefix, so no round may start with the question just answered.
        run_round(url, model, 1, ["What is a fever?"], 8, args.request_timeout, vocab)
        start = 0
        for n in args.concurrency:
            # Each round starts where the last one stopped in the question list (cycling), so a round's first
            # request does not repeat the previous round's question.
            chosen = [prompts[(start + i) % len(prompts)] for i in range(n)]
            start += n
            row = run_round(url, model, n, chosen, args.max_tokens, args.request_timeout, vocab)
            rows.append(row)
            print(f"N={n:>3}: {row['tokens_per_second']} tokens/s, p50 {row['p50_s']} s, p95 {row['p95_s']} s, "
                  f"first token p50 {row['ttft_p50_s']} s, failed {row['failed']}", file=sys.stderr, flush=True)
    vocab.close()
    result = {
        "benchmark": "serve_bench",
        "command": " ".join(["python", "benchmarks/serve_bench.py", *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
                    "load_avg_at_start": [round(x, 2) for x in load_start], "load_avg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "target": str(target.resolve().relative_to(REPO)) if target.resolve().is_relative_to(REPO) else str(target),
        "model": model,
        "server": "medtune serve -> llama-cpp-python's llama_cpp.server (requests take turns on one model)",
        "llama_cpp_python": llamacpp.runtime_version(),
        "threads": threads,
        "max_tokens": args.max_tokens,
        "temperature": 0,
        "stream": True,
        "rows": rows,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print("| concurrency | completion tokens/s | prompt+completion tokens/s | p50 s | p95 s | first token p50 s | "
          "first token p95 s | failed | completion / prompt tokens | load before/after |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for r in rows:
        print(f"| {r['concurrency']} | {r['tokens_per_second']} | {r['prompt_and_completion_tokens_per_second']} | {r['p50_s']} | "
              f"{r['p95_s']} | {r['ttft_p50_s']} | {r['ttft_p95_s']} | {r['failed']} | {r['completion_tokens']} / "
              f"{r['prompt_tokens']} | {r['load_1min_before']} / {r['load_1min_after']} |")
    print(f"wrote {args.output}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
