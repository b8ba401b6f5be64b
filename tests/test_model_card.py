"""MODEL_CARD.md pieces that do not need a finished run."""

from __future__ import annotations

from medtune.artifacts import record_stage
from medtune.config import RunConfig
from medtune.model_card import dataset_licence, write_model_card


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
    card = write_model_card(config).read_text(encoding="utf-8")
    assert "- Training data (pubmedqa-train:/data/pubmedqa): PubMedQA, MIT licence" in card
    assert "- Training data (extra.jsonl): unknown to medtune" in card
    assert "| F16 | merged HF model | 1 | — |" in card and "None" not in card
    assert "| Q8_0 | F16 | 0.97 | 0.0041 |" in card
