"""Decontamination: training questions that match evaluation items are dropped and counted per benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medtune.config import SAMPLE_DATA, BenchmarkSpec, DataConfig, DecontaminationConfig, EvalConfig, ModelConfig, RunConfig
from medtune.rundir import RunDir
from medtune.data.prepare import prepare_data
from medtune.data.decontaminate import Decontaminator, normalise_words
from medtune.data.loading import builtin_path
from medtune.errors import ConfigError

PUBMEDQA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "pubmedqa"

LONG = (
    "A 45-year-old man with long-standing hypertension presents with sudden tearing chest pain radiating to "
    "the back and unequal arm blood pressures; what is the most likely diagnosis?"
)
SHORT = "Which vitamin deficiency causes scurvy in sailors?"


def index(*questions: str, ngram: int = 13, threshold: float = 0.5) -> Decontaminator:
    return Decontaminator([("bench", str(i), q) for i, q in enumerate(questions)], ngram, threshold, {"bench": "test"})


def test_normalisation_ignores_case_punctuation_and_spacing():
    assert normalise_words("Is   THIS, the same\u00a0question?") == ["is", "this", "the", "same", "question"]


def test_exact_and_near_copies_match_unrelated_text_does_not():
    decon = index(LONG, SHORT, "What is anemia?")
    near, near_overlap = near_copy()
    far = " ".join(w if i % 4 else "x" for i, w in enumerate(LONG.split()))
    hits = decon.find(
        [
            f"{LONG.upper()}\nA. Aortic dissection\nB. Myocardial infarction",
            near,
            far,
            f"Question: {SHORT.lower()} Options: A. C B. D",
            "Which vitamin deficiency causes rickets in sailors?",
            "What is anemia?",  # shorter than MIN_QUESTION_WORDS: too generic to count
        ]
    )
    assert hits[0] is not None and hits[0].overlap == 1.0 and hits[0].item_id == "0"
    assert hits[1] is not None and hits[1].overlap == pytest.approx(near_overlap, abs=1e-3) and near_overlap < 0.9
    assert hits[2] is None
    assert hits[3] is not None and hits[3].item_id == "1" and "whole question" in hits[3].describe()
    assert hits[4] is None and hits[5] is None


def near_copy() -> tuple[str, float]:
    """LONG with its last four words changed, and the share of its 13-grams that survive."""
    words = normalise_words(LONG)
    grams = len(words) - 13 + 1
    return " ".join(words[:-4] + ["zz"] * 4), (grams - 4) / grams


def test_threshold_controls_near_copies():
    near, overlap = near_copy()
    assert index(LONG, threshold=overlap + 0.01).find([near]) == [None]
    assert index(LONG, threshold=overlap - 0.01).find([near])[0] is not None


def make_config(tmp_path: Path, model_dir: Path, files: list[str], decontaminate: DecontaminationConfig, **kwargs):
    return RunConfig(
        name="decon",
        output_dir=str(tmp_path / "runs"),
        data=DataConfig(files=files, val_size=0.2, decontaminate=decontaminate),
        model=ModelConfig(base=str(model_dir)),
        **kwargs,
    )


@pytest.mark.skipif(not PUBMEDQA_DIR.is_dir(), reason="needs ../shared/data/pubmedqa")
def test_prepare_drops_pubmedqa_and_medqa_test_questions(tmp_path, tiny_llama_dir):
    pqal = json.loads((PUBMEDQA_DIR / "ori_pqal.json").read_text())
    test_ids = list(json.loads((PUBMEDQA_DIR / "test_ground_truth.json").read_text()))
    train_pool = [pmid for pmid in pqal if pmid not in set(test_ids)]
    medqa = tmp_path / "medqa_test.jsonl"
    medqa_items = [
        {"question": LONG, "options": {"A": "Aortic dissection", "B": "MI", "C": "PE", "D": "GERD"}, "answer_idx": "A"},
        {"question": SHORT, "options": {"A": "A", "B": "B1", "C": "C", "D": "D"}, "answer_idx": "C"},
    ]
    medqa.write_text("".join(json.dumps(item) + "\n" for item in medqa_items))

    def record(question: str) -> str:
        return json.dumps({"instruction": question, "input": "A. yes\nB. no\nC. maybe", "output": "Reasoning.\nThe answer is A."})

    sample = builtin_path(SAMPLE_DATA).read_text().splitlines()[:10]
    lines = [
        record(pqal[test_ids[0]]["QUESTION"]),  # verbatim test question
        record(pqal[test_ids[1]]["QUESTION"].lower().replace("?", " ?")),  # re-cased, re-spaced
        record(pqal[train_pool[0]]["QUESTION"]),  # from the train pool: not contamination
        record(LONG),
        *sample,
    ]
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(lines) + "\n")
    config = make_config(
        tmp_path,
        tiny_llama_dir,
        [str(data)],
        DecontaminationConfig(enabled=True, benchmarks=["pubmedqa", "medqa"], paths={"medqa": str(medqa)}),
        # pubmedqa's local copy comes from the eval section.
        eval=EvalConfig(benchmarks=[BenchmarkSpec(name="pubmedqa", path=str(PUBMEDQA_DIR))]),
    )
    report = prepare_data(config, RunDir.of(config)).report
    assert report["dropped"] == {"contaminated:pubmedqa": 2, "contaminated:medqa": 1}
    assert report["kept"] == 11
    summary = report["decontamination"]
    assert summary["benchmarks"]["pubmedqa"]["items"] == 500 and summary["benchmarks"]["pubmedqa"]["indexed"] >= 495
    assert summary["benchmarks"]["pubmedqa"]["source"] == str(PUBMEDQA_DIR)
    assert summary["benchmarks"]["medqa"]["items"] == 2
    assert summary["dropped"] == {"pubmedqa": 2, "medqa": 1}
    assert report["examples"]["contaminated:pubmedqa"][0].startswith(f"{data}:1: matches pubmedqa item {test_ids[0]}")
    assert report["reasons"]["contaminated:medqa"] == "question matches an evaluation benchmark item"


def test_unknown_benchmark_is_a_config_error(tmp_path, tiny_llama_dir):
    config = make_config(
        tmp_path, tiny_llama_dir, [SAMPLE_DATA], DecontaminationConfig(enabled=True, benchmarks=["medqa_v9"])
    )
    with pytest.raises(ConfigError, match="unknown benchmark 'medqa_v9'"):
        prepare_data(config, RunDir.of(config))
