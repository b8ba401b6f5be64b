"""PubMedQA (PQA-L): yes/no/maybe questions about a PubMed abstract."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from medtune.errors import DataError
from medtune.tasks.files import read_json
from medtune.tasks.registry import YES_NO_MAYBE, Benchmark, Item, register

PUBMEDQA_FILES = ("ori_pqal.json", "test_ground_truth.json")


def _pubmedqa_contexts(value: Any) -> list[str]:
    # Some copies store CONTEXTS as the repr of a Python list; the original release has a JSON list.
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            value = [value]
    return [str(v) for v in value]


def _pubmedqa_item(pmid: str, question: str, contexts: list[str], decision: str, where: str) -> Item:
    decision = str(decision).strip().lower()
    if decision not in YES_NO_MAYBE:
        raise DataError(f"{where}: record {pmid}: final decision {decision!r} is not yes/no/maybe")
    return Item(
        id=str(pmid),
        question=question.strip(),
        options={label: label for label in YES_NO_MAYBE},
        answer=decision,
        context="\n".join(c.strip() for c in contexts),
        benchmark="pubmedqa",
    )


def load_pubmedqa_local(path: Path) -> list[Item]:
    """PQA-L test split from the original release: `ori_pqal.json` + `test_ground_truth.json`.

    `path` is the folder holding both files, or `ori_pqal.json` itself (its folder must hold the
    ground truth). The labels come from test_ground_truth.json, in its order (500 items).
    """
    folder = path if path.is_dir() else path.parent
    records = read_json(folder / PUBMEDQA_FILES[0])
    truth = read_json(folder / PUBMEDQA_FILES[1])
    if not isinstance(records, dict) or not isinstance(truth, dict):
        raise DataError(f"{folder}: expected JSON objects keyed by PubMed id in {' and '.join(PUBMEDQA_FILES)}")
    items = []
    for pmid, decision in truth.items():
        record = records.get(pmid)
        if record is None:
            raise DataError(f"{folder / PUBMEDQA_FILES[1]}: id {pmid} is not in {PUBMEDQA_FILES[0]}")
        try:
            question, contexts = record["QUESTION"], _pubmedqa_contexts(record["CONTEXTS"])
        except (KeyError, TypeError) as exc:
            raise DataError(f"{folder / PUBMEDQA_FILES[0]}: record {pmid} lacks QUESTION/CONTEXTS") from exc
        items.append(_pubmedqa_item(pmid, question, contexts, decision, str(folder / PUBMEDQA_FILES[1])))
    return items


def pubmedqa_from_hub(record: dict[str, Any], index: int) -> Item:
    context = record.get("context") or {}
    return _pubmedqa_item(
        str(record["pubid"]), record["question"], list(context.get("contexts", [])), record["final_decision"],
        "qiaojin/PubMedQA",
    )



register(Benchmark(
    name="pubmedqa",
    title="PubMedQA (PQA-L test)",
    # The hub copy has no split column: all 1,000 labelled items load from it; the standard 500-item
    # test split needs the original test_ground_truth.json (pass the release folder as path).
    hub_id="qiaojin/PubMedQA",
    hub_config="pqa_labeled",
    hub_split="train",
    choices=YES_NO_MAYBE,
    load_local=load_pubmedqa_local,
    from_hub_record=pubmedqa_from_hub,
    local_format="folder with ori_pqal.json and test_ground_truth.json",
))
