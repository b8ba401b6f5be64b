"""MODEL_CARD.md (and the report page beside it): pieces that need no finished run, and a run whose eval stage ran."""

from __future__ import annotations

import json

import pytest

from medtune.artifacts import record_stage
from medtune.config import RunConfig
from medtune.model_card import dataset_licence, write_model_card
from medtune.rundir import RunDir


def _config(tmp_path, data):
    return RunConfig.model_validate(
        {"name": "card", "output_dir": str(tmp_path), "data": data, "model": {"license": "apache-2.0"}}
    )


def test_dataset_licence_knows_the_pubmedqa_converter_wherever_the_folder_is():
    assert "MIT" in dataset_licence("pubmedqa-train:/root/carry/c/pubmedqa")
    assert "MIT" in dataset_licence("../shared/data/pubmedqa/ori_pqal.json")
    assert "medtune's own sample set" in dataset_licence("builtin:reasonmed-sample")
    assert "check the dataset's own licence" in dataset_licence("my-notes.jsonl")


def test_card_lists_a_licence_line_per_data_source_and_dashes_for_missing_figures(tmp_path):
    config = _config(tmp_path, {"files": ["pubmedqa-train:/data/pubmedqa", "extra.jsonl"]})
    config.run_dir.mkdir(parents=True)
    record_stage(config.run_dir, "export", {"status": "done", "files": [
        {"type": "F16", "versus": "merged HF model", "top1_agreement": 1.0, "mean_kl": None},
        {"type": "Q8_0", "versus": "F16", "top1_agreement": 0.97, "mean_kl": 0.0041},
    ]})
    card = write_model_card(config, RunDir.of(config)).read_text(encoding="utf-8")
    assert "- Training data (pubmedqa-train:/data/pubmedqa): PubMedQA, MIT licence" in card
    assert "- Training data (extra.jsonl): unknown to medtune" in card
    assert "| F16 | merged HF model | 1 | — |" in card and "None" not in card
    assert "| Q8_0 | F16 | 0.97 | 0.0041 |" in card


QUALITY = {
    "corpus": "the run's validation split", "tokens": 12345, "positions": 8000, "chunks": 4, "ctx": 2048,
    "rows": [
        {"type": "F16", "imatrix": False, "shipped": True, "size_bytes": 270_886_368, "bits_per_weight": 16.0,
         "perplexity": 7.123, "mean_kl": None, "p99_kl": None, "top1_agreement": None},
        {"type": "Q4_K_M", "imatrix": True, "shipped": True, "size_bytes": 105_454_560, "bits_per_weight": 6.165,
         "perplexity": 7.4321, "mean_kl": 0.0751, "p99_kl": 0.61, "top1_agreement": 0.8553},
    ],
}


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory, smollm2_tokenizer):
    """A run whose eval stage really ran (pipeline.run_stage) on a MedQA file mixing four- and five-option
    items: the base model always answers "A", the merged model "E" (so it is right on the gold-E items the
    base gets wrong), plus the train stage's seed-question answer and an export entry with a quality table."""
    from test_eval_options import write_mixed_medqa
    from test_eval_scoring import make_biased_model

    from medtune import pipeline

    root = tmp_path_factory.mktemp("card")
    base = make_biased_model(smollm2_tokenizer, root / "a-model", "A")
    config = RunConfig.model_validate({
        "name": "card", "output_dir": str(root), "data": {"files": ["x.jsonl"], "val_size": 4.0},
        "model": {"base": str(base)},
        "eval": {"artifacts": ["base", "merged"], "modes": ["loglik"], "device": "cpu", "dtype": "fp32",
                 "benchmarks": [{"name": "medqa", "path": str(write_mixed_medqa(root / "medqa.jsonl"))}]},
    })
    run = RunDir.of(config)
    make_biased_model(smollm2_tokenizer, run.merged, "E")
    run.adapter.mkdir(parents=True)
    run.test_answer.write_text(json.dumps({"question": "A patient presents with severe headache and neck stiffness. "
                                           "A. Migraine B. Meningitis C. Tension headache D. Sinusitis",
                                           "answer": "The answer is Sinusitis.", "choice": "D", "expected": "B",
                                           "correct": False}))
    pipeline.run_stage(config, "eval")
    record_stage(run.root, "train", {"status": "done", "steps": 15, "test_answer_choice": "D",
                                     "test_answer": "The answer is Sinusitis."})
    record_stage(run.root, "export", {"status": "done", "files": [], "quality": QUALITY,
                                      "imatrix": {"source": "the train split", "chunks": 8, "ctx": 512}})
    return config, run


def test_card_example_is_a_held_out_item_with_the_base_answer_beside(evaluated_run):
    config, run = evaluated_run
    card = write_model_card(config, run).read_text(encoding="utf-8")
    example = card.split("## Example")[1].split("\n## ")[0]
    assert ("A held-out medqa item (loglik; benchmark items are not training data), one the fine-tune taught: "
            "the base model got it wrong, the fine-tuned artifact right") in example
    assert "> Question 0: which is it?" in example and "> E. Subarachnoid haemorrhage" in example
    assert "| gold | E. Subarachnoid haemorrhage |  |" in example
    assert "| base model | A. Migraine | no |" in example and "| merged | E. Subarachnoid haemorrhage | yes |" in example


def test_card_labels_the_seed_question_and_explains_its_figures(evaluated_run):
    config, run = evaluated_run
    card = write_model_card(config, run).read_text(encoding="utf-8")
    assert ("Outside question (the seed project's own test question, not in the training data or any benchmark), "
            "answered greedily by the adapter after training: chose D; the right answer is B: wrong.") in card
    assert "> **Answer:** The answer is Sinusitis." in card
    assert "test answer choice" not in card  # the bare "test answer choice: D" line is gone
    assert "validation split (`data.val_size` 4): 4 records, drawn with seed" in card and "validation split 4.0" not in card
    assert "| Q4_K_M | yes | 100.6 MiB | 6.17 | 7.432 | 0.0751 | 0.61 | 85.53% |" in card


def test_card_and_page_flag_a_score_under_the_bar(evaluated_run):
    from medtune.report import write_html_report

    config, run = evaluated_run
    card = write_model_card(config, run).read_text(encoding="utf-8")
    # base answers A everywhere: right on 1 of 7; the majority label (C) is right on 3 of 7
    assert "- **Below the bar:** base (medqa, loglik) 14.3% is below the majority-label line (42.9%)" in card
    page = write_html_report(run).read_text(encoding="utf-8")
    assert "<strong>Below the bar:</strong> base (medqa, loglik) 14.3% is below the majority-label line (42.9%)" in page


def test_page_shows_the_quality_table_gold_options_and_the_example(evaluated_run):
    from test_report_html import _text

    from medtune.report import write_html_report

    _, run = evaluated_run
    text = _text(write_html_report(run).read_text(encoding="utf-8"))
    assert "Quality on held-out text" in text and "Q4_K_M yes 100.6 MiB 6.17 7.432 0.0751 0.61 85.53%" in text
    # example items: the question and its options as eval asked them, the gold letter with its option text
    assert "Question 0: which is it? A. Migraine B. Meningitis C. Tension headache D. Sinusitis E. Subarachnoid haemorrhage" in text
    assert "E. Subarachnoid haemorrhage ✗ A" in text
    assert "gold E. Subarachnoid haemorrhage base model A. Migraine no merged E. Subarachnoid haemorrhage yes" in text
    assert "chose D; the right answer is B: wrong" in text
    assert "4 options (4 items), 5 options (3 items)" in text and "chance %" in text
