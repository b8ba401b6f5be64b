"""Reading benchmark files in their original release formats, with file:line in every error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medtune.errors import DataError
from medtune.tasks.registry import LETTERS, Item


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}): {exc.msg}") from exc



def mc_item(benchmark: str, item_id: str, question: str, options: list[str], answer: str, where: str) -> Item:
    if len(options) != 4 or any(not str(o).strip() for o in options):
        raise DataError(f"{where}: item {item_id}: expected 4 non-empty options, got {options!r}")
    answer = str(answer).strip().upper()
    if answer not in LETTERS:
        raise DataError(f"{where}: item {item_id}: answer {answer!r} is not one of A, B, C, D")
    return Item(
        id=item_id,
        question=str(question).strip(),
        options={letter: str(text).strip() for letter, text in zip(LETTERS, options)},
        answer=answer,
        benchmark=benchmark,
    )


def find_file(path: Path, patterns: tuple[str, ...], what: str) -> Path:
    if path.is_file():
        return path
    if path.is_dir():
        for pattern in patterns:
            found = sorted(path.glob(pattern))
            if found:
                return found[0]
    raise DataError(f"{path}: no {what} found (looked for {', '.join(patterns)})")


def read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not valid JSON: {exc.msg}") from exc
    return rows
