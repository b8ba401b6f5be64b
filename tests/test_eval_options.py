"""Items keep the options they have (issue 24, item 1): a MedQA file mixing four- and five-option
questions, written here, is loaded with every option and scored over all of them in loglik and cot,
on the transformers and the llama.cpp backends, through the eval stage itself. The set's chance
level is stated, and a score under the majority/chance line is flagged (item 3).

The model answers " E" after any prompt (test_eval_scoring.make_biased_model): on a five-option
item it picks E; on a four-option item E is not a candidate, so loglik picks among A-D (all tied
at the same log-probability: A, the first) and a cot reply "E" names no option of the item
(unparsed, counted as wrong)."""

from __future__ import annotations

import json

import pytest
from test_eval_scoring import make_biased_model

from medtune import llamacpp
from medtune.config import BenchmarkSpec, EvalConfig, ModelConfig
from medtune.errors import DataError
from medtune.eval.rows import SUMMARY_COLUMNS, EvalRow, read_results, summary_rows
from medtune.eval.stage import Target, evaluate_targets
from medtune.rundir import EvalFiles
from medtune.tasks import load_items

FIVE = {"A": "Migraine", "B": "Meningitis", "C": "Tension headache", "D": "Sinusitis", "E": "Subarachnoid haemorrhage"}
FOUR = {"A": "Ulnar", "B": "Radial", "C": "Median", "D": "Axillary"}
# (options, gold): three five-option items (gold E, E, B) and four four-option items (gold A, C, C, C)
MIXED = [(FIVE, "E"), (FIVE, "E"), (FIVE, "B"), (FOUR, "A"), (FOUR, "C"), (FOUR, "C"), (FOUR, "C")]


def write_mixed_medqa(path):
    lines = [json.dumps({"question": f"Question {k}: which is it?", "options": options, "answer_idx": gold})
             for k, (options, gold) in enumerate(MIXED)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_medqa_items_keep_four_or_five_options(tmp_path):
    items = load_items("medqa", write_mixed_medqa(tmp_path / "test.jsonl"))
    assert [list(item.options) for item in items] == [list(options) for options, _ in MIXED]
    assert [item.answer for item in items] == [gold for _, gold in MIXED]  # a gold E no longer stops the eval
    assert items[0].options["E"] == "Subarachnoid haemorrhage"


def test_option_letters_with_a_gap_or_a_gold_outside_the_item_are_refused(tmp_path):
    gap = tmp_path / "gap.jsonl"
    gap.write_text(json.dumps({"question": "q", "options": {"A": "a", "B": "b", "D": "d"}, "answer_idx": "A"}) + "\n")
    with pytest.raises(DataError, match=r"gap\.jsonl:1: option letters A, B, D are not A-C without a gap"):
        load_items("medqa", gap)
    outside = tmp_path / "outside.jsonl"
    outside.write_text(json.dumps({"question": "q", "options": FOUR, "answer_idx": "E"}) + "\n")
    with pytest.raises(DataError, match=r"outside\.jsonl:1: item medqa-1: answer 'E' is not one of its options A, B, C, D"):
        load_items("medqa", outside)


def test_reasonmed_style_items_take_five_option_lines(tmp_path):
    path = tmp_path / "five.jsonl"
    instruction = "Which artery?\nA. one\nB. two\nC. three\nD. four\nE. five"
    path.write_text(json.dumps({"instruction": instruction, "input": "", "output": "Because. The answer is E."}) + "\n")
    (item,) = load_items("medtune_sample", path)
    assert list(item.options) == list("ABCDE") and item.answer == "E" and item.question == "Which artery?"


def test_a_question_line_that_looks_like_an_option_stays_question_text(tmp_path):
    path = tmp_path / "coli.jsonl"
    instruction = "A child has bloody diarrhoea.\nE. coli O157 was cultured.\nWhat follows?\nA. HUS\nB. TTP\nC. ITP\nD. DIC"
    path.write_text(json.dumps({"instruction": instruction, "input": "", "output": "The answer is A."}) + "\n")
    (item,) = load_items("medtune_sample", path)
    assert list(item.options) == list("ABCD") and item.options["A"] == "HUS"
    assert item.question == "A child has bloody diarrhoea.\nE. coli O157 was cultured.\nWhat follows?"


@pytest.fixture(scope="module")
def e_model(tmp_path_factory, smollm2_tokenizer):
    return make_biased_model(smollm2_tokenizer, tmp_path_factory.mktemp("e-model"), "E")


def _check_rows(rows: list[EvalRow], files: EvalFiles, label: str) -> None:
    loglik, cot = rows
    assert (loglik.artifact, loglik.mode, cot.mode) == (label, "loglik", "cot")
    # loglik: E on the five-option items (right twice), A on the four-option ones (right once)
    assert loglik.predicted == {"A": 4, "B": 0, "C": 0, "D": 0, "E": 3} and loglik.correct == 3 and loglik.n == 7
    # cot: "E" is an answer only where the item has an E; elsewhere it is unparsed and counted
    assert cot.predicted["E"] == 3 and cot.predicted["unparsed"] == 4 and cot.parse_failures == 4 and cot.correct == 2
    assert loglik.chance == cot.chance == pytest.approx((3 / 5 + 4 / 4) / 7, abs=1e-4)
    assert loglik.option_counts == {"4": 4, "5": 3}
    assert loglik.majority_baseline == pytest.approx(3 / 7, abs=1e-4)  # gold C three times
    assert not loglik.below_bar  # 3/7: on the line, not under it
    assert cot.below_bar and cot.note() == "28.6% is below the majority-label line (42.9%): worse than always giving one answer"
    predictions = [json.loads(line) for line in files.predictions_file(label, "medqa", "loglik").read_text().splitlines()]
    assert predictions[0]["options"] == FIVE and predictions[0]["question"] == "Question 0: which is it?"
    assert set(predictions[0]["scores"]) == set("ABCDE") and set(predictions[3]["scores"]) == set("ABCD")
    report = files.report.read_text()
    assert "| medqa | 7 | 4 options (4 items), 5 options (3 items) | A 1 / B 1 / C 3 / D 0 / E 2 | C | 42.9 |" in report
    assert "| 22.9 |" in report  # chance: the mean of 1/5 and 1/4 over the items
    assert f"- **Below the bar:** {label} (medqa, cot) 28.6% is below the majority-label line (42.9%)" in report
    table = dict(zip(SUMMARY_COLUMNS, list(summary_rows(rows))[1]))
    assert table["note"] == "below majority-label line (42.9%)"
    assert [r.to_json() for r in read_results(files.results).rows] == [r.to_json() for r in rows]


def test_mixed_options_are_scored_over_all_of_them_with_transformers(tmp_path, e_model):
    spec = BenchmarkSpec(name="medqa", path=str(write_mixed_medqa(tmp_path / "test.jsonl")))
    cfg = EvalConfig(benchmarks=[spec], modes=["loglik", "cot"], max_new_tokens=1, device="cpu", dtype="fp32")
    result = evaluate_targets([Target("merged", "hf", ModelConfig(base=str(e_model)), merged=e_model)], [spec], cfg,
                              tmp_path / "eval")
    _check_rows(result.rows, EvalFiles(result.out_dir), "merged")


@pytest.mark.slow
@pytest.mark.skipif(not llamacpp.runtime_available(), reason="llama.cpp runtime not installed (scripts/setup-llama-cpp.sh)")
def test_mixed_options_are_scored_over_all_of_them_with_llama_cpp(tmp_path, e_model):
    try:
        llamacpp.find_converter()
    except Exception as exc:  # noqa: BLE001 - skip with the set-up hint
        pytest.skip(str(exc))
    gguf = llamacpp.convert_to_gguf(e_model, tmp_path / "e-F16.gguf", "f16")
    spec = BenchmarkSpec(name="medqa", path=str(write_mixed_medqa(tmp_path / "test.jsonl")))
    cfg = EvalConfig(benchmarks=[spec], modes=["loglik", "cot"], max_new_tokens=1, n_threads=1)
    target = Target("gguf:F16", "gguf", ModelConfig(base=str(e_model)), gguf=gguf, tokenizer_dir=e_model)
    result = evaluate_targets([target], [spec], cfg, tmp_path / "eval")
    _check_rows(result.rows, EvalFiles(result.out_dir), "gguf:F16")


def test_results_written_before_chance_was_recorded_still_read(tmp_path):
    """An old results.json row (no chance, no option counts, an unknown field) reads into an EvalRow, renders,
    and writes back with its unknown field kept."""
    old = {"artifact": "gguf:Q8_0", "backend": "llama.cpp", "model": "x.gguf", "benchmark": "pubmedqa", "mode": "loglik",
           "n": 4, "correct": 1, "accuracy": 0.25, "ci95": [0.0, 0.75], "parse_failures": 0, "parse_failure_rate": 0.0,
           "seconds": 1.0, "gold": {"yes": 3, "no": 1, "maybe": 0}, "majority_label": "yes", "majority_baseline": 0.75,
           "degenerate": None, "calibration_error": 0.01}
    (tmp_path / "results.json").write_text(json.dumps({"run": "old", "results": [old]}))
    (row,) = read_results(tmp_path / "results.json").rows
    assert row.chance is None and row.bar == 0.75 and row.below_bar and row.extra == {"calibration_error": 0.01}
    assert row.to_json()["calibration_error"] == 0.01
    assert next(iter(summary_rows([old])))[-1] == "below majority-label line (75.0%)"
