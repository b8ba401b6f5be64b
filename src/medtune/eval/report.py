"""Evaluation outputs: results.json (every figure), report.md (the comparison table), accuracy.png."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medtune.artifacts import atomic_write_json, atomic_write_text

RESULTS = "results.json"
REPORT = "report.md"
FIGURE = "accuracy.png"


def write_results(folder: Path, rows: Sequence[dict[str, Any]], meta: dict[str, Any],
                  comparisons: Sequence[dict[str, Any]] = ()) -> Path:
    """results.json: {meta..., "results": [one row per artifact x benchmark x mode],
    "comparisons": [paired differences, see eval.compare]}."""
    path = Path(folder) / RESULTS
    atomic_write_json(path, {**meta, "results": list(rows), "comparisons": list(comparisons)})
    return path


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """One line per result: artifact, benchmark, mode, accuracy with its 95% CI, n, parse failures, time."""
    lines = [
        "| artifact | backend | benchmark | mode | accuracy % | 95% CI | n | unparsed % | seconds | items/s |",
        "|---|---|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        low, high = row["ci95"]
        lines.append(
            f"| {row['artifact']} | {row['backend']} | {row['benchmark']} | {row['mode']} | {_pct(row['accuracy'])} | "
            f"{_pct(low)}–{_pct(high)} | {row['n']} | {_pct(row['parse_failure_rate'])} | {row['seconds']:.1f} | "
            f"{row['items_per_second']:.2f} |"
        )
    return "\n".join(lines)


def comparison_table(comparisons: Sequence[dict[str, Any]]) -> str:
    """One line per paired comparison: the change in accuracy, its paired 95% CI, discordant items."""
    lines = [
        "| artifact | versus | benchmark | mode | difference (points) | paired 95% CI | only artifact right | only versus right |",
        "|---|---|---|---|---:|---|---:|---:|",
    ]
    for c in comparisons:
        low, high = c["ci95"]
        verdict = " (better)" if low > 0 else " (worse)" if high < 0 else ""
        lines.append(
            f"| {c['artifact']} | {c['versus']} | {c['benchmark']} | {c['mode']} | {100 * c['difference']:+.1f}{verdict} | "
            f"{100 * low:+.1f} to {100 * high:+.1f} | {c['only_artifact_right']} | {c['only_versus_right']} |"
        )
    return "\n".join(lines)


def write_report(folder: Path, rows: Sequence[dict[str, Any]], meta: dict[str, Any],
                 comparisons: Sequence[dict[str, Any]] = ()) -> Path:
    """report.md with the results table, the paired comparisons and how the numbers were made."""
    path = Path(folder) / REPORT
    if not rows:
        text = "# Evaluation\n\nNo benchmark was configured (`eval.benchmarks` is empty).\n"
        atomic_write_text(path, text)
        return path
    baselines = {row["benchmark"]: row.get("majority_baseline") for row in rows if row.get("majority_baseline")}
    notes = [
        "# Evaluation",
        "",
        markdown_table(rows),
        "",
        "- loglik: the answer label with the highest log-probability right after the chat-templated prompt and "
        "\"The answer is\"; cot: a greedy step-by-step reply, final answer extracted (unparsed counts as wrong).",
        f"- 95% CI: percentile bootstrap over items ({meta.get('bootstrap_samples', 1000)} resamples).",
    ]
    if baselines:
        notes.append("- Always answering the most frequent label scores: "
                     + ", ".join(f"{name} {_pct(value)}%" for name, value in baselines.items()) + ".")
    if meta.get("subset"):
        notes.append(f"- Seeded subsets: {json.dumps(meta['subset'])}.")
    if comparisons:
        notes += [
            "",
            "Each artifact against the one it was made from, on the same items (fine-tune: merged vs base; "
            "conversion: 16-bit GGUF vs merged; quantization: each quant vs the 16-bit GGUF):",
            "",
            comparison_table(comparisons),
            "",
            "- Paired percentile bootstrap over items; \"better\"/\"worse\" where the interval excludes zero.",
        ]
    atomic_write_text(path, "\n".join(notes) + "\n")
    return path


def write_figure(folder: Path, rows: Sequence[dict[str, Any]]) -> Path | None:
    """Grouped bars: accuracy (with CI whiskers) per benchmark/mode, one bar per artifact."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    groups = list(dict.fromkeys(f"{r['benchmark']}\n{r['mode']}" for r in rows))
    artifacts = list(dict.fromkeys(r["artifact"] for r in rows))
    width = 0.8 / max(len(artifacts), 1)
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(groups) + 0.4 * len(artifacts)), 4))
    for k, artifact in enumerate(artifacts):
        xs, ys, errs = [], [], [[], []]
        for g, group in enumerate(groups):
            for row in rows:
                if row["artifact"] == artifact and f"{row['benchmark']}\n{row['mode']}" == group:
                    xs.append(g + (k - (len(artifacts) - 1) / 2) * width)
                    ys.append(100 * row["accuracy"])
                    errs[0].append(100 * (row["accuracy"] - row["ci95"][0]))
                    errs[1].append(100 * (row["ci95"][1] - row["accuracy"]))
        ax.bar(xs, ys, width, yerr=errs, capsize=3, label=artifact)
    for g, group in enumerate(groups):
        baseline = next((r.get("majority_baseline") for r in rows if f"{r['benchmark']}\n{r['mode']}" == group), None)
        if baseline:
            ax.hlines(100 * baseline, g - 0.45, g + 0.45, colors="grey", linestyles="dashed")
    ax.set_xticks(np.arange(len(groups)), groups)
    ax.set_ylabel("accuracy % (95% CI; dashed: majority label)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(folder) / FIGURE
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
