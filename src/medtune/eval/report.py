"""Evaluation outputs: results.json (every figure), report.md (the comparison table), accuracy.png."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medtune.artifacts import atomic_write_json, atomic_write_text
from medtune.eval.metrics import degenerate_note, recall_text, spread_text

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
    """One line per result: accuracy with its 95% CI beside macro-F1, per-class recall and the answer
    spread (a constant answer is flagged), then n, parse failures and time."""
    lines = [
        "| artifact | backend | benchmark | mode | accuracy % | 95% CI | macro-F1 | recall per class | answers given | n | "
        "unparsed % | seconds |",
        "|---|---|---|---|---:|---|---:|---|---|---:|---:|---:|",
    ]
    for row in rows:
        low, high = row["ci95"]
        flag = degenerate_note(row.get("degenerate"))
        spread = spread_text(row["predicted"]) if row.get("predicted") else "—"
        lines.append(
            f"| {row['artifact']} | {row['backend']} | {row['benchmark']} | {row['mode']} | {_pct(row['accuracy'])} | "
            f"{_pct(low)}–{_pct(high)} | {_f1(row.get('macro_f1'))} | {recall_text(row['recall']) if row.get('recall') else '—'} | "
            f"{spread}{' **(' + flag + ')**' if flag else ''} | {row['n']} | {_pct(row['parse_failure_rate'])} | "
            f"{row['seconds']:.1f} |"
        )
    return "\n".join(lines)


def baseline_table(rows: Sequence[dict[str, Any]]) -> str:
    """Per benchmark: the gold label counts and what always answering the majority label scores."""
    lines = ["| benchmark | n | gold labels | majority label | majority accuracy % | majority macro-F1 |",
             "|---|---:|---|---|---:|---:|"]
    seen = set()
    for row in rows:
        if row["benchmark"] in seen or not row.get("gold"):
            continue
        seen.add(row["benchmark"])
        # On a balanced set every label is "the majority": naming one (the first) would read as a fact.
        tied = len(row["gold"]) > 1 and len(set(row["gold"].values())) == 1
        majority = "any (all tied)" if tied else row.get("majority_label", "")
        lines.append(f"| {row['benchmark']} | {row['n']} | {spread_text(row['gold'])} | {majority} | "
                     f"{_pct(row.get('majority_baseline', 0))} | {_f1(row.get('majority_macro_f1'))} |")
    return "\n".join(lines)


def _f1(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def degenerate_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One warning line per result whose answers are (almost) all one label."""
    return [f"- **No signal:** {row['artifact']} ({row['benchmark']}, {row['mode']}) {degenerate_note(row['degenerate'])}; "
            f"its accuracy is the share of that label among the gold answers, not a measure of the model."
            for row in rows if row.get("degenerate")]


def comparison_table(comparisons: Sequence[dict[str, Any]]) -> str:
    """One line per paired comparison: the change in accuracy, its paired 95% CI, discordant items."""
    lines = [
        "| artifact | versus | benchmark | mode | difference (points) | paired 95% CI | only artifact right | only versus right |",
        "|---|---|---|---|---:|---|---:|---:|",
    ]
    for c in comparisons:
        low, high = c["ci95"]
        verdict = " (better)" if low > 0 else " (worse)" if high < 0 else ""
        note = f" — {c['note']}" if c.get("note") else ""
        lines.append(
            f"| {c['artifact']} | {c['versus']} | {c['benchmark']} | {c['mode']} | {100 * c['difference']:+.1f}{verdict} | "
            f"{100 * low:+.1f} to {100 * high:+.1f} | {c['only_artifact_right']} | {c['only_versus_right']}{note} |"
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
    notes = [
        "# Evaluation",
        "",
        markdown_table(rows),
        "",
        *degenerate_lines(rows),
        "",
        "What always answering the most frequent label scores (the bar every artifact must clear):",
        "",
        baseline_table(rows),
        "",
        "- loglik: the answer label with the highest log-probability right after the chat-templated prompt and "
        "\"The answer is\"; cot: a greedy step-by-step reply, final answer extracted (unparsed counts as wrong).",
        f"- 95% CI: percentile bootstrap over items ({meta.get('bootstrap_samples', 1000)} resamples).",
    ]
    notes.append("- macro-F1: the mean over answer labels of each label's F1 (a constant answer scores at most "
                 "about 1/k of it); recall per class: the share of each gold label answered correctly.")
    if meta.get("prompt_style") == "lm_eval":
        notes.append("- Prompt style lm_eval: lm-evaluation-harness's zero-shot prompt for each benchmark (no chat "
                     "template, no \"The answer is\"), each choice scored by its summed log-probability, as lm-eval does.")
    if any(row["mode"] == "loglik_calibrated" for row in rows):
        notes.append("- loglik_calibrated: the loglik answers after contextual calibration (Zhao et al. 2021): each "
                     "item's label probabilities divided by their mean under content-free inputs (\"N/A\", \"\", "
                     "\"[MASK]\" in place of the question, passage and options); a separate row, the raw loglik row stays.")
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
