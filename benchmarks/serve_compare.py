#!/usr/bin/env python3
"""The chat page's "compare all" through a running `medtune serve`: the same question to every quant,
all at once (the page before issue 27's fix, and still the page on a GPU) or one after another (the
page on a CPU now: /medtune/info says `"compare": "in_turn"`).

Per quant it records the time to the first content token and to the end of its answer, counted from
the moment the question is sent, and the time until every answer is complete. Each repetition gets a
new "Case N." prefix so no prompt-cache hit flatters either mode, and the modes alternate (ABAB).

  medtune serve runs/demo --port 8731 &
  python benchmarks/serve_compare.py http://127.0.0.1:8731 --reps 4   # appends to results/serve_compare.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from medtune.benchmarking import append_run, print_table

QUESTIONS = {
    "mcq": (
        "A 25-year-old man develops hives, wheezing, lip swelling and a blood pressure of 78/40 mmHg minutes "
        "after a bee sting. What is the first treatment?\nA. Oral antihistamine\nB. Intramuscular adrenaline\n"
        "C. Intravenous hydrocortisone\nD. Nebulised salbutamol"
    ),
    "long": (
        "Explain, step by step, how adrenaline reverses the effects of anaphylaxis on the airways, the blood "
        "vessels and the heart, and why antihistamines are not enough on their own."
    ),
}
MODES = ("at_once", "in_turn")


async def stream_answer(client: httpx.AsyncClient, model: str, messages: list, sent: float, max_tokens: int) -> dict:
    body = {"model": model, "messages": messages, "stream": True, "stream_options": {"include_usage": True},
            "temperature": 0, "max_tokens": max_tokens}
    first, tokens = None, 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            chunk = json.loads(line[5:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices") or []:
                if first is None and (choice.get("delta") or {}).get("content"):
                    first = time.perf_counter() - sent
    return {"model": model, "ttft_s": round(first or float("nan"), 3),
            "done_s": round(time.perf_counter() - sent, 3), "completion_tokens": tokens}


async def compare_once(url: str, key: str | None, mode: str, question: str, max_tokens: int) -> dict:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(base_url=url, timeout=None, trust_env=False, headers=headers) as client:
        info = (await client.get("/medtune/info")).json()
        models = [m["id"] for m in info["models"]]
        system = [{"role": "system", "content": info["system_prompt"]}] if info.get("system_prompt") else []
        messages = system + [{"role": "user", "content": f"Case {random.randrange(10**6)}. {question}"}]
        sent = time.perf_counter()
        if mode == "at_once":
            answers = await asyncio.gather(*(stream_answer(client, m, messages, sent, max_tokens) for m in models))
        else:
            answers = [await stream_answer(client, m, messages, sent, max_tokens) for m in models]
        return {"all_done_s": round(time.perf_counter() - sent, 3), "answers": list(answers),
                "server_compare": info.get("compare"), "devices": info.get("devices")}


def summary(runs: list[dict]) -> list[dict]:
    rows = []
    for question in sorted({r["question"] for r in runs}):
        for mode in MODES:
            mine = [r for r in runs if r["mode"] == mode and r["question"] == question]
            if not mine:
                continue
            done = [r["all_done_s"] for r in mine]
            row: dict[str, Any] = {"question": question, "mode": mode, "runs": len(mine),
                                   "all_done_p50_s": round(statistics.median(done), 2),
                                   "all_done_min_s": min(done), "all_done_max_s": max(done)}
            for model in [a["model"] for a in mine[0]["answers"]]:
                per = [a for r in mine for a in r["answers"] if a["model"] == model]
                row[f"{model}_ttft_p50_s"] = round(statistics.median(a["ttft_s"] for a in per), 2)
                row[f"{model}_done_p50_s"] = round(statistics.median(a["done_s"] for a in per), 2)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="a running `medtune serve` on a run folder with several quants")
    parser.add_argument("--api-key", default=os.environ.get("MEDTUNE_API_KEY"))
    parser.add_argument("--reps", type=int, default=4, help="repetitions per mode (alternated)")
    parser.add_argument("--questions", default="mcq", help="comma-separated: " + ", ".join(QUESTIONS))
    parser.add_argument("--max-tokens", type=int, default=512, help="the page's default")
    parser.add_argument("--results-dir", type=Path, default=None)
    args = parser.parse_args()
    runs = []
    for question in args.questions.split(","):
        for rep in range(args.reps):
            for mode in MODES if rep % 2 == 0 else MODES[::-1]:
                load = round(os.getloadavg()[0], 2)
                run = asyncio.run(compare_once(args.url, args.api_key, mode, QUESTIONS[question], args.max_tokens))
                runs.append({"question": question, "mode": mode, "rep": rep + 1, "load1_before": load, **run})
                print(f"{question} {mode:8} rep {rep + 1}: all done {run['all_done_s']:.2f} s", flush=True)
    rows = summary(runs)
    print_table(rows, title="compare all: every quant answers the same question")
    append_run("serve_compare", rows, results_dir=args.results_dir, runs=runs)


if __name__ == "__main__":
    main()
