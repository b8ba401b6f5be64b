"""Evaluation outputs: results.json (every figure), report.md (the comparison table), accuracy.png.

Every table here renders `EvalRow`s (medtune.eval.rows), the same rows the HTML report, the model
card and the CLI summary render; the figure is drawn by medtune.plots.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from medtune.artifacts import atomic_write_json, atomic_write_text
from medtune.eval.metrics import recall_text, spread_text
from medtune.eval.rows import EvalRow, options_text
from medtune.plots import plot_accuracy
from medtune.rundir import EvalFiles

BAR_TITLE = ("What always answering the most frequent label scores, and chance (the mean over items of one over "
             "their number of options): an artifact must clear the higher of the two")


def write_results(files: EvalFiles, rows: Sequence[EvalRow], meta: dict[str, Any],
                  comparisons: Sequence[dict[str, Any]] = ()) -> None:
    """results.json: {meta..., "results": [EvalRow.to_json() per artifact x benchmark x mode],
    "comparisons": [paired differences, see eval.compare]}."""
    atomic_write_json(files.results, {**meta, "results": [r.to_json() for r in rows], "comparisons": list(comparisons)})


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def markdown_table(rows: Sequence[EvalRow]) -> str:
    """One line per result: accuracy with its 95% CI beside macro-F1, per-class recall and the answer
    spread (a constant answer or a score under the bar is flagged), then n, parse failures and time."""
    lines = [
        "| artifact | backend | benchmark | mode | accuracy % | 95% CI | macro-F1 | recall per class | answers given | n | "
        "unparsed % | seconds |",
        "|---|---|---|---|---:|---|---:|---|---|---:|---:|---:|",
    ]
    for row in rows:
        low, high = row.ci95
        flag = row.note()
        spread = spread_text(row.predicted) if row.predicted else "—"
        lines.append(
            f"| {row.artifact} | {row.backend} | {row.benchmark} | {row.mode} | {_pct(row.accuracy)} | "
            f"{_pct(low)}–{_pct(high)} | {_f1(row.macro_f1)} | {recall_text(row.recall) if row.recall else '—'} | "
            f"{spread}{' **(' + flag + ')**' if flag else ''} | {row.n} | {_pct(row.parse_failure_rate)} | "
            f"{row.seconds:.1f} |"
        )
    return "\n".join(lines)


def benchmark_rows(rows: Sequence[EvalRow]) -> list[EvalRow]:
    """The first row of each benchmark that has gold counts: the set's own figures (gold labels,
    majority line, chance, options) are the same for every artifact and mode."""
    seen: dict[str, EvalRow] = {}
    for row in rows:
        if row.gold and row.benchmark not in seen:
            seen[row.benchmark] = row
    return list(seen.values())


def baseline_table(rows: Sequence[EvalRow]) -> str:
    """Per benchmark: options per item, the gold label counts, what always answering the majority
    label scores, and chance."""
    lines = ["| benchmark | n | options | gold labels | majority label | majority accuracy % | majority macro-F1 | chance % |",
             "|---|---:|---|---|---|---:|---:|---:|"]
    for row in benchmark_rows(rows):
        options = options_text(row.option_counts) if row.option_counts else "—"
        lines.append(f"| {row.benchmark} | {row.n} | {options} | {spread_text(row.gold)} | {row.majority_text} | "
                     f"{_pct(row.majority_baseline)} | {_f1(row.majority_macro_f1)} | {_pct(row.chance)} |")
    return "\n".join(lines)


def _f1(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def warning_lines(rows: Sequence[EvalRow]) -> list[str]:
    """One warning line per result whose answers are (almost) all one label, or that scores under the bar."""
    lines = []
    for row in rows:
        if row.degenerate:
            lines.append(f"- **No signal:** {row.artifact} ({row.benchmark}, {row.mode}) {row.warnings()[0]}; "
                         "its accuracy is the share of that label among the gold answers, not a measure of the model.")
        if row.below_bar:
            lines.append(f"- **Below the bar:** {row.artifact} ({row.benchmark}, {row.mode}) {row.below_bar_note()}.")
    return lines


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


def write_report(files: EvalFiles, rows: Sequence[EvalRow], meta: dict[str, Any],
                 comparisons: Sequence[dict[str, Any]] = ()) -> None:
    """report.md with the results table, the paired comparisons and how the numbers were made."""
    if not rows:
        atomic_write_text(files.report, "# Evaluation\n\nNo benchmark was configured (`eval.benchmarks` is empty).\n")
        return
    notes = [
        "# Evaluation",
        "",
        markdown_table(rows),
        "",
        *warning_lines(rows),
        "",
        f"{BAR_TITLE}:",
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
    if any(row.mode == "loglik_calibrated" for row in rows):
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
    atomic_write_text(files.report, "\n".join(notes) + "\n")


def write_figure(files: EvalFiles, rows: Sequence[EvalRow]) -> None:
    """accuracy.png: accuracy with CI whiskers per artifact, one panel per benchmark, the bar dashed."""
    if rows:
        plot_accuracy(rows, files.accuracy_plot)
