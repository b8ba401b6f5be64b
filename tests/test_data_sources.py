"""Derived sources: the PubMedQA train pool as chat examples, disjoint from the test split."""

from __future__ import annotations

import json

import pytest
from conftest import PUBMEDQA_DIR

from medtune.data.sources import pubmedqa_train, resolve_source
from medtune.errors import DataError

pytestmark = pytest.mark.skipif(not PUBMEDQA_DIR.is_dir(), reason="../shared/data/pubmedqa not present")


def test_pubmedqa_train_excludes_test_split_and_uses_eval_prompts(tmp_path, monkeypatch):
    from medtune.tasks import load_items, user_message

    monkeypatch.setenv("MEDTUNE_CACHE", str(tmp_path))
    path = resolve_source(f"pubmedqa-train:{PUBMEDQA_DIR}")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 1000  # 500 train/dev records x (step-by-step, direct)
    test_ids = set(json.loads((PUBMEDQA_DIR / "test_ground_truth.json").read_text()))
    train_ids = {r["id"].rsplit("-", 1)[0] for r in records}
    assert len(train_ids) == 500 and not train_ids & test_ids
    cot, direct = records[0]["messages"], records[1]["messages"]
    assert cot[1]["content"].endswith(("The answer is yes.", "The answer is no.", "The answer is maybe."))
    assert direct[1]["content"] == cot[1]["content"].rsplit("\n\n", 1)[1]
    # Same user prompts as evaluation, so training teaches exactly the format that is scored.
    test_item = load_items("pubmedqa", str(PUBMEDQA_DIR), limit=1)[0]
    assert user_message(test_item, "cot").split("Question:")[1].splitlines()[1:] == cot[0]["content"].split("Question:")[1].splitlines()[1:]
    assert pubmedqa_train(PUBMEDQA_DIR) == path  # cached by content hash


def test_missing_files_name_the_folder(tmp_path):
    with pytest.raises(DataError, match="ori_pqal.json not found"):
        pubmedqa_train(tmp_path)


def test_plain_paths_are_not_derived_sources():
    assert resolve_source("data/train.jsonl") is None
    assert resolve_source("builtin:reasonmed-sample") is None


def test_pubmedqa_reasoning_is_reasonmed_format_with_reasoning_before_the_answer(tmp_path, monkeypatch):
    from medtune.data.formats import detect_format, normalise
    from medtune.tasks import load_items, user_message

    monkeypatch.setenv("MEDTUNE_CACHE", str(tmp_path))
    path = resolve_source(f"pubmedqa-reasoning:{PUBMEDQA_DIR}")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 500  # one per train/dev record
    test_ids = set(json.loads((PUBMEDQA_DIR / "test_ground_truth.json").read_text()))
    assert not {r["id"] for r in records} & test_ids
    pool = json.loads((PUBMEDQA_DIR / "ori_pqal.json").read_text())
    first = records[0]
    assert detect_format(first) == "reasonmed"
    truth = pool[first["id"]]
    assert first["output"] == f"{truth['LONG_ANSWER'].strip()}\n\nThe answer is {truth['final_decision']}."
    user, assistant = normalise("reasonmed", first)
    # The user turn is exactly the evaluation's cot prompt for that record.
    from medtune.data.sources import _pubmedqa_train_pool

    items = {pmid: item for pmid, item, _ in _pubmedqa_train_pool(PUBMEDQA_DIR, "t")[0]}
    assert user["content"] == user_message(items[first["id"]], "cot")
    assert assistant["content"].index(truth["LONG_ANSWER"].strip()) == 0
    test_item = load_items("pubmedqa", str(PUBMEDQA_DIR), limit=1)[0]
    assert user_message(test_item, "cot").rsplit("\n\n", 1)[1] == user["content"].rsplit("\n\n", 1)[1]
    from collections import Counter

    answers = Counter(r["output"].rsplit("The answer is ", 1)[1].rstrip(".") for r in records)
    assert answers == Counter(pool[p]["final_decision"] for p in pool if p not in test_ids)  # nothing dropped
