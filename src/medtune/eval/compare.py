"""Each artifact against the one it was made from, item by item: did this step help or hurt?

The chain follows the pipeline: adapter and merged model against the base model (the fine-tune's
gain), the 16/32-bit GGUF against the merged model (conversion), and each quantized GGUF against
the 16-bit GGUF (quantization). Differences are paired over the same items (see
stats.paired_difference), so a gain is judged by the items on which the two artifacts disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medtune.eval.metrics import degenerate_note
from medtune.eval.rows import EvalRow
from medtune.eval.stats import paired_difference

FULL_PRECISION_GGUF = ("F32", "F16", "BF16")


def reference_of(label: str, labels: Sequence[str]) -> str | None:
    """The artifact `label` was made from, among `labels` (None when it is not there)."""
    present = set(labels)

    def first(*candidates: str) -> str | None:
        return next((c for c in candidates if c in present and c != label), None)

    if label in ("adapter", "merged"):
        return first("base")
    if label.startswith("gguf:"):
        if label.removeprefix("gguf:").upper() in FULL_PRECISION_GGUF:
            return first("merged", "adapter", "base")
        return first(*(f"gguf:{t}" for t in FULL_PRECISION_GGUF), "merged", "adapter", "base")
    return None


def paired_comparisons(
    rows: Sequence[EvalRow],
    predictions: dict[str, list[dict[str, Any]]],
    *,
    samples: int = 1000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One entry per (artifact, its reference, benchmark, mode) where both were scored.

    `predictions` maps "<label with ':' as '-'>__<benchmark>__<mode>" to per-item records with
    "id" and "correct" (what the eval stage writes). Items are matched by id.
    """
    labels = list(dict.fromkeys(row.artifact for row in rows))
    by_key = {(row.artifact, row.benchmark, row.mode): row for row in rows}
    scored = set(by_key)
    comparisons = []
    for row in rows:
        versus = reference_of(row.artifact, labels)
        if versus is None or (versus, row.benchmark, row.mode) not in scored:
            continue
        mine = _correct_by_id(predictions, row.artifact, row.benchmark, row.mode)
        theirs = _correct_by_id(predictions, versus, row.benchmark, row.mode)
        shared = [item for item in mine if item in theirs]
        if not shared:
            continue
        result = paired_difference([mine[i] for i in shared], [theirs[i] for i in shared], samples, seed)
        comparisons.append({
            "artifact": row.artifact, "versus": versus, "benchmark": row.benchmark, "mode": row.mode,
            "n": result["n"], "difference": result["difference"], "ci95": result["ci95"],
            "only_artifact_right": result["only_a"], "only_versus_right": result["only_b"],
            "note": comparison_note(row, by_key[(versus, row.benchmark, row.mode)]),
        })
    return comparisons


def _correct_by_id(predictions: dict[str, list[dict[str, Any]]], label: str, benchmark: str, mode: str) -> dict[str, bool]:
    records = predictions.get(f"{label.replace(':', '-')}__{benchmark}__{mode}", [])
    return {str(record["id"]): bool(record["correct"]) for record in records}


def comparison_note(row: EvalRow, versus_row: EvalRow) -> str:
    """Why a paired difference may mean nothing: either side answers (almost) one label everywhere."""
    notes = []
    for side in (row, versus_row):
        text = degenerate_note(side.degenerate)
        if text:
            notes.append(f"{side.artifact} {text}")
    if len(notes) == 2 and row.degenerate["label"] == versus_row.degenerate["label"]:
        return f"both answer \"{row.degenerate['label']}\" on nearly every item: the difference carries no signal"
    return "; ".join(notes)
