"""What an accuracy figure hides: per-class recall, macro-F1, the spread of answers, the majority class.

A model that answers "yes" to everything scores the share of "yes" items on PubMedQA; a model
that answers "D" to everything scores 25% on a balanced multiple-choice set. These figures sit
next to every accuracy medtune reports so that neither passes for a result. Plain Python (no
torch, no numpy needed).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

UNPARSED = "unparsed"
"""The spread's key for predictions that named no label (cot replies without a final answer)."""

DEGENERATE_SHARE = 0.9
"""One answer on at least this share of the items means the predictions carry no signal."""


def class_report(golds: Sequence[str], predictions: Sequence[str | None], labels: Iterable[str]) -> dict[str, Any]:
    """Per-class recall/precision/F1, macro-F1, answer spread, majority baseline and a degenerate flag.

    `labels`: the benchmark's answer labels (every one gets a recall, 0.0 when never right; a
    label with no gold item has recall None and is left out of the macro average).
    `predictions[i]` is None when the reply named no label; it counts as wrong for every class.
    Returns {"recall", "precision", "f1": {label: value}, "macro_f1", "gold": {label: count},
    "predicted": {label: count, "unparsed": count}, "majority_label", "majority_baseline",
    "degenerate": None or {"label", "count", "n", "share"}}.
    """
    labels = list(labels)
    if len(golds) != len(predictions):
        raise ValueError(f"class_report: {len(golds)} gold labels but {len(predictions)} predictions")
    n = len(golds)
    gold_counts = Counter(golds)
    predicted_counts = Counter(UNPARSED if p is None else p for p in predictions)
    hits = Counter(g for g, p in zip(golds, predictions) if g == p)
    recall: dict[str, float | None] = {}
    precision: dict[str, float | None] = {}
    f1: dict[str, float | None] = {}
    for label in labels:
        recall[label] = _ratio(hits[label], gold_counts[label])
        precision[label] = _ratio(hits[label], predicted_counts[label])
        r, p = recall[label], precision[label] or 0.0
        f1[label] = None if r is None else (0.0 if r + p == 0 else round(2 * r * p / (r + p), 4))
    scored = [value for value in f1.values() if value is not None]
    majority_label, majority_count = max(((label, gold_counts[label]) for label in labels), key=lambda kv: kv[1],
                                         default=("", 0))
    return {
        "recall": recall,
        "precision": precision,
        "f1": f1,
        "macro_f1": round(sum(scored) / len(scored), 4) if scored else 0.0,
        "gold": {label: gold_counts[label] for label in labels},
        "predicted": {**{label: predicted_counts[label] for label in labels},
                      **({UNPARSED: predicted_counts[UNPARSED]} if predicted_counts[UNPARSED] else {})},
        "majority_label": majority_label,
        "majority_baseline": round(majority_count / n, 4) if n else 0.0,
        "majority_macro_f1": _constant_macro_f1(gold_counts, majority_label, labels),
        "degenerate": degenerate(predicted_counts, n),
    }


def degenerate(predicted_counts: Counter | dict[str, int], n: int, share: float = DEGENERATE_SHARE) -> dict[str, Any] | None:
    """{"label", "count", "n", "share"} when one answer covers >= `share` of the n predictions, else None."""
    if n == 0 or not predicted_counts:
        return None
    label, count = max(predicted_counts.items(), key=lambda kv: kv[1])
    if count / n < share:
        return None
    return {"label": label, "count": int(count), "n": int(n), "share": round(count / n, 4)}


def degenerate_note(flag: dict[str, Any] | None) -> str:
    """'answers "D" on 16/16 items: no signal' for a degenerate flag, '' otherwise."""
    if not flag:
        return ""
    what = "gives no parseable answer" if flag["label"] == UNPARSED else f"answers \"{flag['label']}\""
    return f"{what} on {flag['count']}/{flag['n']} items: no signal"


def spread_text(predicted: dict[str, int]) -> str:
    """'yes 318 / no 181 / maybe 0 / unparsed 1'."""
    return " / ".join(f"{label} {count}" for label, count in predicted.items())


def recall_text(recall: dict[str, float | None]) -> str:
    """'yes 74% / no 55% / maybe 0%' (labels with no gold item show a dash)."""
    return " / ".join(f"{label} {'—' if value is None else f'{100 * value:.0f}%'}" for label, value in recall.items())


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _constant_macro_f1(gold_counts: Counter, label: str, labels: list[str]) -> float:
    """Macro-F1 of always answering `label` (the figure the majority baseline gets)."""
    n = sum(gold_counts[l] for l in labels)
    present = [l for l in labels if gold_counts[l]]
    if not n or not present or not label:
        return 0.0
    precision = gold_counts[label] / n
    f1_label = 2 * precision / (1 + precision)  # recall of the constant label is 1
    return round(f1_label / len(present), 4)
