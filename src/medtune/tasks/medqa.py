"""MedQA (USMLE): the four-option copy or the original US files with five options (A-E)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medtune.errors import DataError
from medtune.tasks.files import find_file, lettered_options, mc_item, read_jsonl
from medtune.tasks.registry import OPTION_LETTERS, Benchmark, Item, register


def load_medqa_local(path: Path) -> list[Item]:
    """MedQA (USMLE) JSONL: `question`, `options` {A..D} or {A..E}, `answer_idx` per line.

    Each item keeps every option it has: the original US release has five (A-E), the common
    four-option copy four; a file may mix both. `path` is the JSONL file or a folder holding `*test*.jsonl`.
    """
    file = find_file(path, ("test.jsonl", "*test*.jsonl", "**/*4_options*/**/*test*.jsonl"), "MedQA test JSONL")
    items = []
    for number, row in read_jsonl(file):
        where = f"{file}:{number}"
        try:
            options = lettered_options(row["options"], where)
            items.append(mc_item("medqa", f"medqa-{number}", row["question"], options, row["answer_idx"], where))
        except KeyError as exc:
            raise DataError(f"{where}: missing field {exc}; expected question, options, answer_idx") from exc
    return items


def medqa_from_hub(record: dict[str, Any], index: int) -> Item:
    where = f"GBaker/MedQA-USMLE-4-options test row {index}"
    return mc_item("medqa", f"medqa-{index + 1}", record["question"], lettered_options(record["options"], where),
                    record["answer_idx"], where)



register(Benchmark(
    name="medqa",
    title="MedQA (USMLE, test; four or five options per item)",
    hub_id="GBaker/MedQA-USMLE-4-options",
    hub_config=None,
    hub_split="test",
    choices=OPTION_LETTERS[:5],
    load_local=load_medqa_local,
    from_hub_record=medqa_from_hub,
    local_format="JSONL with question, options {A..D} or {A..E}, answer_idx",
))
