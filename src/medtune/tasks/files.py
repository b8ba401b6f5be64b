"""Reading benchmark files in their original release formats, with file:line in every error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medtune.errors import DataError
from medtune.tasks.registry import OPTION_LETTERS, Item


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}): {exc.msg}") from exc



def mc_item(benchmark: str, item_id: str, question: str, options: list[str], answer: str, where: str) -> Item:
    """A multiple-choice item with every option its source gives, lettered A, B, C, ... in order.

    Raises DataError (naming `where`) for fewer than two or more than ten options, an empty option,
    or an answer that is not one of the item's own letters."""
    if not 2 <= len(options) <= len(OPTION_LETTERS) or any(not str(o).strip() for o in options):
        raise DataError(f"{where}: item {item_id}: expected 2-{len(OPTION_LETTERS)} non-empty options, got {options!r}")
    letters = OPTION_LETTERS[: len(options)]
    answer = str(answer).strip().upper()
    if answer not in letters:
        raise DataError(f"{where}: item {item_id}: answer {answer!r} is not one of its options {', '.join(letters)}")
    return Item(
        id=item_id,
        question=str(question).strip(),
        options={letter: str(text).strip() for letter, text in zip(letters, options)},
        answer=answer,
        benchmark=benchmark,
    )


def lettered_options(options: Any, where: str) -> list[str]:
    """Option texts in letter order from {"A": ..., "B": ..., ...} or [{"key": "A", "value": ...}, ...]
    (hub copies), keeping every option given. Raises DataError when the letters are not A, B, C, ...
    without a gap (a missing "C" would silently shift every later option)."""
    if isinstance(options, list):
        options = {o.get("key"): o.get("value") for o in options if isinstance(o, dict)}
    if not isinstance(options, dict):
        raise DataError(f"{where}: options must be an object {{A: ..., B: ..., ...}}")
    keys = [str(k).strip().upper() for k in options]
    expected = list(OPTION_LETTERS[: len(keys)])
    if sorted(keys) != expected:
        raise DataError(f"{where}: option letters {', '.join(map(str, options))} are not A-{expected[-1] if expected else 'A'} "
                        "without a gap")
    by_letter = {str(k).strip().upper(): v for k, v in options.items()}
    return [by_letter[letter] for letter in expected]


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
