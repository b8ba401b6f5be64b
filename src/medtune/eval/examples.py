"""Examples a reader can check by eye, for the model card and the HTML report.

- `heldout_example`: one held-out benchmark item as the eval stage asked it (question and options
  recorded in its predictions), with the base model's answer beside the final artifact's, chosen
  among the items the fine-tune turned from wrong to right when there is one.
- `seed_answer`: the seed project's own test question (severe headache and neck stiffness), which
  the train stage asks the adapter: a question from outside the training data, shown with its
  right answer and whether the adapter gave it.
Both read only what the run wrote (eval/predictions/, adapter/test_answer.json) through RunDir.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtune.eval.rows import EvalRow
from medtune.rundir import RunDir

NOT_RECORDED = ("question text not recorded: these predictions were written before medtune kept each item's "
                "question in them; rerun `medtune eval CONFIG` to see it")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (a predictions file, the training log); [] when missing; a line
    cut by a kill is skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def option_text(record: dict[str, Any], label: str | None) -> str:
    """'B. Meningitis' for a lettered option recorded with its text; the label alone otherwise."""
    if label is None:
        return "no parseable answer"
    options = record.get("options") or {}
    text = options.get(label)
    return f"{label}. {text}" if text and text != label else str(label)


@dataclass
class HeldoutExample:
    benchmark: str
    mode: str
    record: dict[str, Any]  # the final artifact's prediction record (id, question, options, answer, ...)
    base: dict[str, Any]  # the base model's record for the same item
    final_label: str  # the artifact compared with base (the last one evaluated)
    taught: bool  # base wrong, final artifact right

    @property
    def question(self) -> str | None:
        return self.record.get("question") or self.base.get("question")

    def options(self) -> list[str]:
        """'B. Meningitis' per lettered option ([] for yes/no/maybe, whose labels are their texts)."""
        return [f"{label}. {text}" for label, text in (self.record.get("options") or {}).items() if text != label]

    def intro(self) -> str:
        why = ("one the fine-tune taught: the base model got it wrong, the fine-tuned artifact right" if self.taught
               else "the fine-tune turned no item from wrong to right here; the first item the artifact got right"
               if self.record.get("correct") else "neither model answered any item right here; the first item")
        return f"A held-out {self.benchmark} item ({self.mode}; benchmark items are not training data), {why}"

    def answers(self) -> list[tuple[str, str, str]]:
        """(who, answer with its option text, right?) for the gold answer, the base model and the artifact."""
        record, base = self.record, self.base
        return [
            ("gold", option_text(record, record.get("answer")), ""),
            ("base model", option_text(base, base.get("predicted")), "yes" if base.get("correct") else "no"),
            (self.final_label, option_text(record, record.get("predicted")), "yes" if record.get("correct") else "no"),
        ]


def heldout_example(run: RunDir, rows: list[EvalRow]) -> HeldoutExample | None:
    """A held-out benchmark item answered by the base model and by the last artifact evaluated (the
    most processed one: a quantized GGUF, else merged), preferring one the fine-tune got right and
    the base model wrong. None when the run did not evaluate base beside another artifact."""
    for row in reversed(rows):
        if row.artifact == "base":
            continue
        if not any(r.artifact == "base" and r.benchmark == row.benchmark and r.mode == row.mode for r in rows):
            continue
        final = read_jsonl(run.predictions_file(row.artifact, row.benchmark, row.mode))
        base = {str(p.get("id")): p for p in read_jsonl(run.predictions_file("base", row.benchmark, row.mode))}
        pairs = [(p, base[str(p.get("id"))]) for p in final if str(p.get("id")) in base]
        if not pairs:
            continue
        taught = [pair for pair in pairs if pair[0].get("correct") and not pair[1].get("correct")]
        right = [pair for pair in pairs if pair[0].get("correct")]
        record, base_record = (taught or right or pairs)[0]
        return HeldoutExample(row.benchmark, row.mode, record, base_record, row.artifact, bool(taught))
    return None


@dataclass
class SeedAnswer:
    question: str
    answer: str
    choice: str | None
    expected: str | None
    correct: bool | None

    def verdict(self) -> str:
        if self.expected is None:
            return "the right answer was not recorded with it"
        chose = f"chose {self.choice}" if self.choice else "named no option"
        return f"{chose}; the right answer is {self.expected}: {'right' if self.correct else 'wrong'}"


def seed_answer(run: RunDir) -> SeedAnswer | None:
    """adapter/test_answer.json, when the train stage wrote one."""
    try:
        data = json.loads(run.test_answer.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    answer = str(data.get("answer") or data.get("response") or "").strip()
    expected = data.get("expected")
    correct = data.get("correct")
    if correct is None and expected is not None:
        correct = data.get("choice") == expected
    return SeedAnswer(str(data.get("question") or "").strip(), answer, data.get("choice"), expected, correct)


SEED_TITLE = ("Outside question (the seed project's own test question, not in the training data or any benchmark), "
              "answered greedily by the adapter after training")
