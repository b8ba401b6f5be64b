"""MedMCQA (Indian medical entrance exams, 4 options)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medtune.errors import DataError
from medtune.tasks.files import find_file, mc_item, read_jsonl
from medtune.tasks.registry import LETTERS, Benchmark, Item, register


def _medmcqa_answer(cop: Any, one_based: bool, where: str) -> str:
    if isinstance(cop, str) and cop.strip().upper() in LETTERS:
        return cop.strip().upper()
    try:
        index = int(cop) - (1 if one_based else 0)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: cop {cop!r} is not an option number") from exc
    if not 0 <= index < 4:
        raise DataError(f"{where}: cop {cop!r} is out of range ({'1-4' if one_based else '0-3'})")
    return LETTERS[index]


def load_medmcqa_local(path: Path) -> list[Item]:
    """MedMCQA original release `dev.json` (one JSON object per line): `question`, `opa`..`opd`, `cop`.

    In the original release `cop` is 1-4 (1 = opa); the hub copy uses 0-3. `path` is the file or a
    folder holding dev.json / validation*.jsonl.
    """
    file = find_file(path, ("dev.json", "validation*.json*", "*dev*.json*"), "MedMCQA dev.json")
    items = []
    for number, row in read_jsonl(file):
        where = f"{file}:{number}"
        try:
            options = [row["opa"], row["opb"], row["opc"], row["opd"]]
            answer = _medmcqa_answer(row["cop"], one_based=True, where=where)
            items.append(mc_item("medmcqa", str(row.get("id") or f"medmcqa-{number}"), row["question"], options,
                                  answer, where))
        except KeyError as exc:
            raise DataError(f"{where}: missing field {exc}; expected question, opa, opb, opc, opd, cop") from exc
    return items


def medmcqa_from_hub(record: dict[str, Any], index: int) -> Item:
    where = f"openlifescienceai/medmcqa validation row {index}"
    options = [record["opa"], record["opb"], record["opc"], record["opd"]]
    answer = _medmcqa_answer(record["cop"], one_based=False, where=where)
    return mc_item("medmcqa", str(record.get("id") or f"medmcqa-{index + 1}"), record["question"], options, answer, where)



register(Benchmark(
    name="medmcqa",
    title="MedMCQA (validation)",
    hub_id="openlifescienceai/medmcqa",
    hub_config=None,
    hub_split="validation",
    choices=LETTERS,
    load_local=load_medmcqa_local,
    from_hub_record=medmcqa_from_hub,
    local_format="dev.json lines with question, opa..opd, cop (1-4)",
))
