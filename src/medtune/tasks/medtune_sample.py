"""medtune's own held-out multiple-choice set in ReasonMed's schema (or any such JSONL).

The shipped set (`builtin:reasonmed-heldout`) is the demo's test: 64 original questions on the 32
facts that the demo's training set (`builtin:reasonmed-facts`) teaches, two new case descriptions
per fact, never trained on. Eight question families (antidotes, vitamin deficiencies, nerve
injuries, organisms, skin lesions, joint diseases, acute abdomen, lung conditions) keep one option
list each, in one order, as a question bank does: it measures whether a fine-tune learned the
facts well enough to recognise them in other words, not general medical knowledge.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from medtune.errors import DataError
from medtune.tasks.files import mc_item, read_jsonl
from medtune.tasks.registry import OPTION_LETTERS, Benchmark, Item, register

_OPTION_LINE = re.compile(r"^\s*([A-J])[.)]\s*(.+?)\s*$")
_FINAL_ANSWER = re.compile(r"The answer is \(?([A-J])\)?\.?\s*$")
_FINAL_TEXT = re.compile(r"The answer is (.+?)\.?\s*$")


def load_reasonmed_mcq_local(path: Path) -> list[Item]:
    """Multiple-choice records in ReasonMed's schema: options "A. ..." as lines of `input` (or of
    `instruction`), the answer from the final "The answer is X." of `output` (a letter, or the
    text of one option). medtune ships such sets: `builtin:reasonmed-heldout` (the benchmark),
    `builtin:reasonmed-facts-val` and `builtin:reasonmed-facts` (the demo's validation and training data)."""
    items = []
    for line_no, record in read_jsonl(Path(path)):
        where = f"{path}:{line_no}"
        instruction = str(record.get("instruction", "")).splitlines()
        lines = instruction + str(record.get("input", "")).splitlines()
        block = _option_block(lines)
        options = [_OPTION_LINE.match(lines[k]).group(2) for k in block]
        question = "\n".join(line for k, line in enumerate(instruction) if k not in block)
        answer = _final_answer(str(record.get("output", "")).strip(), options)
        if not answer:
            raise DataError(f"{where}: output does not end with 'The answer is X.' (X: a letter or an option's text)")
        items.append(mc_item("medtune_sample", f"{Path(path).stem}-{line_no}", question, options, answer, where))
    return items


def _option_block(lines: list[str]) -> list[int]:
    """Indices of the option lines: the last run of consecutive lines lettered A, B, C, ... in order.
    Any other line, "E. coli grows ..." in a question included, stays text."""
    block: list[int] = []
    for k, line in enumerate(lines):
        match = _OPTION_LINE.match(line)
        if match and match.group(1) == "A":
            block = [k]
        elif match and block and block[-1] == k - 1 and match.group(1) == OPTION_LETTERS[len(block)]:
            block.append(k)
    return block


def _final_answer(output: str, options: list[str]) -> str | None:
    letter = _FINAL_ANSWER.search(output)
    if letter:
        return letter.group(1)
    said = _FINAL_TEXT.search(output.splitlines()[-1] if output else "")
    named = [OPTION_LETTERS[k] for k, text in enumerate(options) if said and text.strip().lower() == said.group(1).strip().lower()]
    return named[0] if len(named) == 1 else None


def _no_hub_record(record: dict[str, Any], index: int) -> Item:
    raise DataError("medtune_sample has no hub copy: it ships with medtune (path builtin:reasonmed-heldout)")


register(Benchmark(
    name="medtune_sample",
    title="medtune held-out sample (64 original MCQs on the 32 facts the demo's training set teaches)",
    hub_id="",
    hub_config=None,
    hub_split="",
    choices=OPTION_LETTERS,
    load_local=load_reasonmed_mcq_local,
    from_hub_record=_no_hub_record,
    default_path="builtin:reasonmed-heldout",
    local_format="ReasonMed-style JSONL (options as 'A. ...' lines, output ending 'The answer is X.'), or builtin:reasonmed-heldout",
))
