"""Serving under load: today's llama-cpp-python server vs `medtune serve` (llama.cpp's llama-server).

    python benchmarks/serve_bench.py --target runs/demo/gguf/demo-Q4_K_M.gguf     # the full run
    python benchmarks/serve_bench.py --target FILE --levels 1,2 --requests 1 --repeats 1 --max-tokens 16   # a smoke run

What a user meets: N = 1, 4, 8, 16 concurrent clients, each sending --requests chat requests one
after another (streaming, through the official `openai` client), each request a different held-out
medical question as the chat page would send it; greedy, `max_tokens` 128, with the end-of-turn
tokens banned (`logit_bias`) so every answer runs the full 128 tokens on both servers (same work;
no stop string cuts an answer short). Per level: aggregate completion tokens/s over the level's
wall time, p50/p95 request latency and time to first token, failed (errors) and hung (no byte for
--request-timeout s) requests.

The two servers, alternating (A B, B A, ...) for --repeats repetitions so that drift on the machine
falls on both: `llama_cpp_python` = `python -m llama_cpp.server` with the settings medtune used to
serve it with (the file's chat template, one model, requests take turns); `llama_server` =
`medtune serve` as a user runs it (llama-server with --parallel slots, behind medtune's front).
Both get the same --threads.

An honest figure needs an otherwise idle machine: before each level the script waits until other
processes use under --idle-cores of CPU, measures what they used during the level (total CPU time
from /proc/stat minus the servers' and this script's own), and redoes a level that others
disturbed (up to --redo times; a level still disturbed is kept with `disturbed: true`).

With a run directory as --target (several quants), it also measures the cost of switching quants:
a short request alternating between two quants vs. repeated on one, on both servers.
Results: appended to benchmarks/results/serve_bench.json (medtune.benchmarking).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from medtune import benchmarking, llamacpp
from medtune.rundir import open_artifact
from medtune.serve import resolve_serve_target
from medtune.tasks.prompts import user_message
from medtune.tasks.registry import load_items

SERVERS = ("llama_cpp_python", "llama_server")
STOP_TOKENS = ("<|im_end|>", "<|im_start|>", "<|endoftext|>")  # ChatML's, banned beside the file's EOS/EOT


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen
    models: list[str]


# ---- starting the two servers ------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def start_server(name: str, files: dict[str, Path], target: Path, args) -> Iterator[Server]:
    """Start one of SERVERS on `files` ({model name: GGUF file}); stop it (and its children) afterwards."""
    if name == "llama_server":
        command = [sys.executable, "-m", "medtune.cli", "serve", str(target), "--port", "0", "--threads", str(args.threads),
                   "--parallel", str(args.parallel), "--n-ctx", str(args.n_ctx)]
        ready = r"serving on (http://\S+)"
    else:
        port = free_port()
        config = Path(tempfile.mkdtemp()) / "llama_cpp_server.json"
        models = [{"model": str(path), "model_alias": alias, "chat_format": "chat_template.default", "n_ctx": args.n_ctx,
                   "n_threads": args.threads, "n_threads_batch": args.threads, "n_batch": 512, "logits_all": False,
                   "verbose": False} for alias, path in files.items()]
        config.write_text(json.dumps({"host": "127.0.0.1", "port": port, "interrupt_requests": False, "models": models}, indent=2))
        command = [sys.executable, "-m", "llama_cpp.server", "--config_file", str(config)]
        ready = r"Uvicorn running on (http://\S+)"
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "300"})
    url = wait_for_line(process, ready, timeout=600)
    try:
        yield Server(name, url, process, list(files))
    finally:
        process.terminate()  # medtune serve stops its llama-servers on SIGTERM
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_line(process: subprocess.Popen, pattern: str, timeout: float) -> str:
    found: dict[str, str] = {}
    seen = threading.Event()

    def read() -> None:
        for line in process.stdout:
            match = re.search(pattern, line)
            if match and not seen.is_set():
                found["url"] = match.group(1).rstrip("/")
                seen.set()
            elif "error" in line.lower():
                sys.stderr.write(f"  [server] {line}")
        seen.set()

    threading.Thread(target=read, daemon=True).start()
    if not seen.wait(timeout) or "url" not in found:
        process.kill()
        raise SystemExit(f"{process.args[:4]} did not start (exit {process.poll()})")
    return found["url"]


# ---- the machine: waiting for quiet, measuring disturbance --------------------------------------
def busy_cpu_seconds() -> float:
    """CPU seconds all processes spent since boot (user+nice+system+irq+softirq+steal)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    busy = fields[0] + fields[1] + fields[2] + sum(fields[5:8])
    return busy / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds(server: Server) -> float:
    """CPU seconds used by this script and the server with its children (alive ones), each process once.

    The server is this script's child, so it is among the script's descendants too: counted twice,
    its own use would hide other processes' (the disturbance check would always read 0)."""
    import psutil

    processes: dict[int, psutil.Process] = {}
    for root in (os.getpid(), server.process.pid):
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(root)
            processes.update({p.pid: p for p in [proc, *proc.children(recursive=True)]})
    total = 0.0
    for p in processes.values():
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


class OtherLoad:
    """Cores used by other processes between start() and stop()."""

    def __init__(self, server: Server):
        self.server = server

    def start(self) -> None:
        self.t0, self.busy0, self.own0 = time.monotonic(), busy_cpu_seconds(), own_cpu_seconds(self.server)

    def stop(self) -> float:
        wall = time.monotonic() - self.t0
        other = (busy_cpu_seconds() - self.busy0) - (own_cpu_seconds(self.server) - self.own0)
        return max(0.0, other / wall) if wall > 0 else 0.0


def wait_until_idle(server: Server, idle_cores: float, max_wait: float) -> float:
    """Wait (up to max_wait s) until other processes use under idle_cores for 5 s; returns the last reading."""
    deadline = time.monotonic() + max_wait
    while True:
        probe = OtherLoad(server)
        probe.start()
        time.sleep(5)
        used = probe.stop()
        if used < idle_cores or time.monotonic() > deadline:
            return used
        print(f"  waiting for an idle machine: other processes use {used:.2f} cores", file=sys.stderr, flush=True)


# ---- one level ----------------------------------------------------------------------------------
def one_request(client, model: str, question: str, args, logit_bias: dict[str, int]) -> dict:
    began = time.perf_counter()
    first, tokens, pieces, finish = None, None, 0, None
    try:
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": question}], max_tokens=args.max_tokens, temperature=0,
            stream=True, stream_options={"include_usage": True}, logit_bias=logit_bias)
        for chunk in stream:
            for choice in chunk.choices:
                if choice.delta.content:
                    first = first or time.perf_counter()
                    pieces += 1
                finish = choice.finish_reason or finish
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
        ended = time.perf_counter()
    except Exception as exc:  # noqa: BLE001 - a failed or hung request is a figure here, not a crash
        hung = "timed out" in str(exc).lower() or "timeout" in type(exc).__name__.lower()
        return {"ok": False, "hung": hung, "error": f"{type(exc).__name__}: {exc}"[:300]}
    # llama-cpp-python's stream carries no usage: a run to max_tokens is exactly max_tokens tokens.
    if tokens is None:
        tokens = args.max_tokens if finish == "length" else pieces
    return {"ok": True, "latency_s": ended - began, "ttft_s": (first or ended) - began, "tokens": tokens, "finish": finish}


def run_level(server: Server, model: str, n: int, questions: list[str], args, logit_bias: dict[str, int]) -> dict:
    """N clients, each sending args.requests requests in turn; the level's figures."""
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=args.api_key or "none", max_retries=0,
                           timeout=args.request_timeout)
    barrier = threading.Barrier(n)

    def client_loop(c: int) -> list[dict]:
        barrier.wait()
        return [one_request(client, model, questions[(c * args.requests + r) % len(questions)], args, logit_bias)
                for r in range(args.requests)]

    load = OtherLoad(server)
    load.start()
    loadavg_before = os.getloadavg()[0]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=n) as pool:
        done = [d for batch in pool.map(client_loop, range(n)) for d in batch]
    wall = time.perf_counter() - started
    ok = [d for d in done if d["ok"]]
    latencies, ttfts = [d["latency_s"] for d in ok], [d["ttft_s"] for d in ok]
    tokens = sum(d["tokens"] for d in ok)
    return {
        "server": server.name, "concurrency": n, "requests": len(done), "completion_tokens": tokens,
        "wall_s": round(wall, 2), "completion_tokens_per_second": round(tokens / wall, 1),
        "p50_s": percentile(latencies, 50), "p95_s": percentile(latencies, 95),
        "ttft_p50_s": percentile(ttfts, 50), "ttft_p95_s": percentile(ttfts, 95),
        "failed": sum(not d["ok"] and not d["hung"] for d in done), "hung": sum(not d["ok"] and d["hung"] for d in done),
        "cut_before_max_tokens": sum(d["tokens"] < args.max_tokens for d in ok),
        "errors": sorted({d["error"] for d in done if not d["ok"]})[:3],
        "other_processes_cores": round(load.stop(), 2),
        "loadavg_1min_before": round(loadavg_before, 2), "loadavg_1min_after": round(os.getloadavg()[0], 2),
    }


def percentile(values: list[float], q: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 3)
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 3)


def measured_level(server: Server, model: str, n: int, questions: list[str], args, logit_bias) -> dict:
    """run_level on a quiet machine; redone (up to args.redo times) when other processes disturbed it."""
    for attempt in range(args.redo + 1):
        wait_until_idle(server, args.idle_cores, args.max_idle_wait)
        row = run_level(server, model, n, questions, args, logit_bias)
        row["attempt"] = attempt + 1
        row["disturbed"] = row["other_processes_cores"] >= args.idle_cores
        print(f"  {server.name:<16} N={n:<3} {row['completion_tokens_per_second']:>7} tok/s  p50 {row['p50_s']} s  "
              f"ttft p50 {row['ttft_p50_s']} s  failed {row['failed']} hung {row['hung']}  "
              f"others {row['other_processes_cores']} cores{'  (disturbed: redo)' if row['disturbed'] else ''}",
              file=sys.stderr, flush=True)
        if not row["disturbed"]:
            break
    return row


# ---- switching quants ---------------------------------------------------------------------------
def switch_cost(server: Server, a: str, b: str, args) -> dict:
    """Median latency of a 1-token request repeated on quant `a` vs alternating between `a` and `b`."""
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=args.api_key or "none", max_retries=0, timeout=600)

    def timed(model: str) -> float:
        began = time.perf_counter()
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Name one vitamin."}],
                                       max_tokens=1, temperature=0)
        return time.perf_counter() - began

    timed(a), timed(b)  # both loaded once (llama-cpp-python: the last one stays)
    same = [timed(a) for _ in range(args.switches)]
    alternating = [timed((a, b)[i % 2]) for i in range(1, args.switches + 1)]
    return {"server": server.name, "models": [a, b], "same_quant_p50_s": percentile(same, 50),
            "alternating_p50_s": percentile(alternating, 50),
            "switch_cost_s": round(statistics.median(alternating) - statistics.median(same), 3)}


# ---- the whole run ------------------------------------------------------------------------------
def eog_logit_bias(file: Path) -> dict[str, int]:
    """logit_bias banning the file's end-of-generation tokens (EOS, EOT, ChatML's markers)."""
    import llama_cpp

    with llamacpp.quiet_runtime():
        llm = llama_cpp.Llama(model_path=str(file), vocab_only=True, verbose=False)
    try:
        ids = {llm.token_eos()}
        for text in STOP_TOKENS:
            found = llm.tokenize(text.encode(), add_bos=False, special=True)
            if len(found) == 1:
                ids.add(found[0])
    finally:
        llm.close()
    return {str(i): -100 for i in sorted(ids) if i >= 0}


def summary(rows: list[dict]) -> list[dict]:
    """Per server x concurrency: the median over repetitions, and llama_server's throughput over llama_cpp_python's."""
    out = []
    for n in sorted({r["concurrency"] for r in rows}):
        for name in SERVERS:
            picked = [r for r in rows if r["server"] == name and r["concurrency"] == n]
            if not picked:
                continue
            med = {k: statistics.median(r[k] for r in picked if r[k] is not None) if any(r[k] is not None for r in picked) else None
                   for k in ("completion_tokens_per_second", "ttft_p50_s", "ttft_p95_s", "p50_s", "p95_s")}
            out.append({"concurrency": n, "server": name, **med, "failed": sum(r["failed"] for r in picked),
                        "hung": sum(r["hung"] for r in picked), "repetitions": len(picked)})
        pair = {r["server"]: r for r in out if r["concurrency"] == n}
        if len(pair) == 2 and pair["llama_cpp_python"]["completion_tokens_per_second"]:
            pair["llama_server"]["throughput_vs_llama_cpp_python"] = round(
                pair["llama_server"]["completion_tokens_per_second"] / pair["llama_cpp_python"]["completion_tokens_per_second"], 2)
    return out


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="a GGUF file, or a run directory (adds the cost of switching quants)")
    parser.add_argument("--model", default=None, help="quant to load-test in a run directory (default: the server's first)")
    parser.add_argument("--levels", default="1,4,8,16", help="concurrent clients per level, comma-separated")
    parser.add_argument("--requests", type=int, default=3, help="requests each client sends, one after another")
    parser.add_argument("--repeats", type=int, default=3, help="alternating repetitions of both servers")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--parallel", type=int, default=8, help="llama-server slots per model")
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--request-timeout", type=float, default=300.0, help="seconds without a byte after which a request counts as hung")
    parser.add_argument("--idle-cores", type=float, default=0.3, help="other processes' CPU use (cores) that counts as idle")
    parser.add_argument("--max-idle-wait", type=float, default=600.0, help="longest wait for an idle machine before a level")
    parser.add_argument("--redo", type=int, default=2, help="times a disturbed level is redone")
    parser.add_argument("--switches", type=int, default=6, help="requests per switching-cost measurement")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--results-dir", default=None, help="default: benchmarks/results")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    artifact = open_artifact(args.target)
    files = {artifact.label(f): f for f in (artifact.run.gguf_files() if artifact.kind == "run" else artifact.gguf_files)}
    if not files:
        raise SystemExit(f"{args.target}: no GGUF file to serve")
    levels = [int(x) for x in args.levels.split(",")]
    servers = args.servers.split(",")
    questions = [user_message(item, "cot") for item in load_items("medtune_sample", "builtin:reasonmed-heldout")]
    model = args.model or resolve_serve_target(args.target).names[0]  # the run's recommended quant, on both servers
    logit_bias = eog_logit_bias(files[model])
    rows, switching = [], []
    for rep in range(args.repeats):
        order = servers if rep % 2 == 0 else servers[::-1]
        for name in order:
            with start_server(name, files, Path(args.target), args) as server:
                run_level(server, model, 1, ["What is a fever?"], argparse.Namespace(**{**vars(args), "requests": 1, "max_tokens": 8}), {})
                for i, n in enumerate(levels):
                    offset = (rep * len(levels) + i) * 7  # a level does not reuse the previous level's questions first
                    row = measured_level(server, model, n, questions[offset:] + questions[:offset], args, logit_bias)
                    rows.append({**row, "repetition": rep + 1, "model": model})
                if rep == 0 and len(files) > 1:
                    switching.append(switch_cost(server, model, next(m for m in files if m != model), args))
    table = summary(rows)
    benchmarking.print_table(table, ["concurrency", "server", "completion_tokens_per_second", "ttft_p50_s", "p50_s", "p95_s",
                                     "failed", "hung", "throughput_vs_llama_cpp_python"], title="median over repetitions")
    if switching:
        benchmarking.print_table(switching, title="cost of switching quants")
    run = benchmarking.append_run(
        "serve_bench", rows, results_dir=args.results_dir, summary=table, switching_quants=switching,
        settings={k: v for k, v in vars(args).items() if k not in ("api_key", "results_dir")},
        target=str(args.target), files={k: str(v) for k, v in files.items()},
        logit_bias_banned_tokens=sorted(int(i) for i in logit_bias), extra_versions=("openai",))
    print(f"appended to {benchmarking.results_path('serve_bench', args.results_dir)} ({run['date']})")


if __name__ == "__main__":
    main()
