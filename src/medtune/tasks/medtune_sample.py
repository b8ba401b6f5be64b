"""medtune's own held-out multiple-choice set in ReasonMed's schema (or any such JSONL)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from medtune.errors import DataError
from medtune.tasks.files import mc_item, read_jsonl
from medtune.tasks.registry import LETTERS, Benchmark, Item, register

_OPTION_LINE = re.compile(r"^\s*([A-D])[.)]\s*(.+?)\s*$")
_FINAL_ANSWER = re.compile(r"The answer is \(?([A-D])\)?\.?\s*$")


def load_reasonmed_mcq_local(path: Path) -> list[Item]:
    """Multiple-choice records in ReasonMed's schema: options "A. ..." as lines of `input` (or of
    `instruction`), the answer from the final "The answer is X." of `output`. medtune ships one
    such set, `builtin:reasonmed-heldout`."""
    items = []
    for line_no, record in read_jsonl(Path(path)):
        where = f"{path}:{line_no}"
        text = f"{record.get('instruction', '')}\n{record.get('input', '')}"
        options = [m.group(2) for m in map(_OPTION_LINE.match, text.splitlines()) if m]
        question = "\n".join(l for l in str(record.get("instruction", "")).splitlines() if not _OPTION_LINE.match(l))
        answer = _FINAL_ANSWER.search(str(record.get("output", "")).strip())
        if not answer:
            raise DataError(f"{where}: output does not end with 'The answer is X.'")
        items.append(mc_item("medtune_sample", f"{Path(path).stem}-{line_no}", question, options, answer.group(1), where))
    return items


def _no_hub_record(record: dict[str, Any], index: int) -> Item:
    raise DataError("medtune_sample has no hub copy: it ships with medtune (path builtin:reasonmed-heldout)")


register(Benchmark(
    name="medtune_sample",
    title="medtune held-out sample (16 original MCQs)",
    hub_id="",
    hub_config=None,
    hub_split="",
    choices=LETTERS,
    load_local=load_reasonmed_mcq_local,
    from_hub_record=_no_hub_record,
    default_path="builtin:reasonmed-heldout",
    local_format="ReasonMed-style JSONL (options as 'A. ...' lines, output ending 'The answer is X.'), or builtin:reasonmed-heldout",
))
