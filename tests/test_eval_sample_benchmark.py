"""The demo's data and its held-out benchmark (medtune_sample): balanced, built for the demo's
fine-tune (every held-out fact is taught by the training set), and disjoint from what is trained on."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict

import pytest

from medtune.data.loading import builtin_path
from medtune.errors import DataError
from medtune.tasks import load_items
from medtune.tasks.medtune_sample import load_reasonmed_mcq_local

TRAIN, VAL, TEST = "builtin:reasonmed-facts", "builtin:reasonmed-facts-val", "builtin:reasonmed-heldout"


def _records(name: str) -> list[dict]:
    return [json.loads(line) for line in builtin_path(name).read_text(encoding="utf-8").splitlines()]


def _facts(name: str) -> Counter:
    """(option list, answer letter) per record: a family's option list fixes what each letter means."""
    return Counter((tuple(item.options.values()), item.answer) for item in load_reasonmed_mcq_local(builtin_path(name)))


def _case(record: dict) -> str:
    """The case description without the family's closing question."""
    return record["instruction"].rsplit(". ", 1)[0]


def _runs(text: str, n: int) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def test_heldout_items_load_with_four_options_and_balanced_answers():
    items = load_items("medtune_sample", TEST)
    assert len(items) == 64  # a 95% CI of about +-12 points around 50%
    assert all(list(item.options) == ["A", "B", "C", "D"] for item in items)
    assert Counter(item.answer for item in items) == {"A": 16, "B": 16, "C": 16, "D": 16}
    families = defaultdict(list)
    for item in items:
        families[tuple(item.options.values())].append(item.answer)
    assert len(families) == 8 and all(Counter(answers) == {"A": 2, "B": 2, "C": 2, "D": 2} for answers in families.values())
    assert all("A." not in item.question for item in items)
    assert load_items("medtune_sample") == items  # ships with medtune: no path needed


def test_every_heldout_fact_is_taught_by_two_training_records_and_checked_by_one_validation_record():
    taught, validated, tested = _facts(TRAIN), _facts(VAL), _facts(TEST)
    assert set(tested) == set(taught) == set(validated) and len(tested) == 32
    assert set(taught.values()) == {2} and set(validated.values()) == {1} and set(tested.values()) == {2}


def test_training_replies_reason_in_one_line_and_name_the_answer():
    for record, item in zip(_records(TRAIN), load_reasonmed_mcq_local(builtin_path(TRAIN))):
        assert set(record) == {"instruction", "input", "output"}
        reasoning, final = record["output"].split("\n")
        answer = item.options[item.answer]
        # The option's text, not its letter: a 135M model cannot yet tie a letter to an option.
        assert final == f"The answer is {answer}."
        assert answer.split(" (")[0].lower() in reasoning.lower()


def test_heldout_and_validation_cases_share_no_text_with_training():
    # No run of 7 words of a case description in common (the family questions are shared on purpose).
    train_runs = set().union(*(_runs(_case(r), 7) for r in _records(TRAIN)))
    val_runs = set().union(*(_runs(_case(r), 7) for r in _records(VAL)))
    for record in _records(TEST):
        assert not _runs(_case(record), 7) & (train_runs | val_runs), (record["instruction"], _runs(_case(record), 7) & (train_runs | val_runs))
    for record in _records(VAL):
        assert not _runs(_case(record), 7) & train_runs, (record["instruction"], _runs(_case(record), 7) & train_runs)
    assert not {r["instruction"] for r in _records(TRAIN)} & {item.question for item in load_items("medtune_sample", TEST)}


def test_the_demo_decontamination_finds_no_heldout_item_in_the_training_set(tmp_path):
    from medtune.config import BenchmarkSpec, DataConfig, DecontaminationConfig, EvalConfig, RunConfig
    from medtune.data.decontaminate import Decontaminator

    config = RunConfig(
        name="t", output_dir=str(tmp_path),
        data=DataConfig(files=[TRAIN], decontaminate=DecontaminationConfig(enabled=True, benchmarks=["medtune_sample"])),
        eval=EvalConfig(benchmarks=[BenchmarkSpec(name="medtune_sample", path=TEST)]),
    )
    checker = Decontaminator.from_config(config)
    assert checker.summary()["benchmarks"]["medtune_sample"]["items"] == 64
    questions = [f"{r['instruction']}\n{r['input']}" for r in _records(TRAIN)]
    assert checker.find(questions) == [None] * len(questions)


def test_record_without_final_answer_line_names_file_and_line(tmp_path):
    path = tmp_path / "mcq.jsonl"
    path.write_text(json.dumps({"instruction": "Q?", "input": "A. a\nB. b\nC. c\nD. d", "output": "Because."}) + "\n")
    with pytest.raises(DataError, match=r"mcq.jsonl:1: output does not end"):
        load_reasonmed_mcq_local(path)


def test_the_report_names_no_majority_label_on_a_balanced_set():
    from medtune.eval.report import baseline_table
    from medtune.eval.rows import EvalRow

    row = {"artifact": "base", "mode": "loglik", "accuracy": 0.3, "benchmark": "medtune_sample", "n": 64,
           "gold": {"A": 16, "B": 16, "C": 16, "D": 16}, "majority_label": "A", "majority_baseline": 0.25,
           "majority_macro_f1": 0.1, "chance": 0.25, "option_counts": {"4": 64}}
    assert ("| medtune_sample | 64 | 4 options | A 16 / B 16 / C 16 / D 16 | any (all tied) | 25.0 | 0.100 | 25.0 |"
            in baseline_table([EvalRow.from_json(row)]))
    skewed = {**row, "gold": {"A": 20, "B": 16, "C": 16, "D": 12}, "majority_baseline": 0.3125}
    assert "| A | 31.2 |" in baseline_table([EvalRow.from_json(skewed)])
