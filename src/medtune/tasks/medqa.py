"""MedQA (USMLE, 4 options)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medtune.errors import DataError
from medtune.tasks.files import find_file, mc_item, read_jsonl
from medtune.tasks.registry import LETTERS, Benchmark, Item, register

def _medqa_options(options: Any, where: str) -> list[str]:
    if isinstance(options, dict):
        try:
            return [options[letter] for letter in LETTERS]
        except KeyError as exc:
            raise DataError(f"{where}: options lack key {exc}; expected A, B, C, D") from exc
    if isinstance(options, list):  # hub copies store [{"key": "A", "value": ...}, ...]
        mapping = {o.get("key"): o.get("value") for o in options if isinstance(o, dict)}
        return [mapping.get(letter, "") for letter in LETTERS]
    raise DataError(f"{where}: options must be an object {{A: ..., D: ...}}")


def load_medqa_local(path: Path) -> list[Item]:
    """MedQA (USMLE, 4 options) JSONL: `question`, `options` {A..D}, `answer_idx` per line.

    `path` is the JSONL file or a folder holding `*test*.jsonl`.
    """
    file = find_file(path, ("test.jsonl", "*test*.jsonl", "**/*4_options*/**/*test*.jsonl"), "MedQA test JSONL")
    items = []
    for number, row in read_jsonl(file):
        where = f"{file}:{number}"
        try:
            options = _medqa_options(row["options"], where)
            items.append(mc_item("medqa", f"medqa-{number}", row["question"], options, row["answer_idx"], where))
        except KeyError as exc:
            raise DataError(f"{where}: missing field {exc}; expected question, options, answer_idx") from exc
    return items


def medqa_from_hub(record: dict[str, Any], index: int) -> Item:
    where = f"GBaker/MedQA-USMLE-4-options test row {index}"
    return mc_item("medqa", f"medqa-{index + 1}", record["question"], _medqa_options(record["options"], where),
                    record["answer_idx"], where)



register(Benchmark(
    name="medqa",
    title="MedQA (USMLE, 4 options, test)",
    hub_id="GBaker/MedQA-USMLE-4-options",
    hub_config=None,
    hub_split="test",
    choices=LETTERS,
    load_local=load_medqa_local,
    from_hub_record=medqa_from_hub,
    local_format="JSONL with question, options {A..D}, answer_idx",
))
