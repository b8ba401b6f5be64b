"""The shipped held-out benchmark (medtune_sample): loads, is balanced, and is disjoint from the training sample."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from medtune.data.loading import builtin_path
from medtune.errors import DataError
from medtune.tasks import load_items
from medtune.tasks.medtune_sample import load_reasonmed_mcq_local


def test_heldout_items_load_with_four_options_and_balanced_answers():
    items = load_items("medtune_sample", "builtin:reasonmed-heldout")
    assert len(items) == 16
    assert all(list(item.options) == ["A", "B", "C", "D"] for item in items)
    assert Counter(item.answer for item in items) == {"A": 4, "B": 4, "C": 4, "D": 4}
    assert all("A." not in item.question for item in items)
    assert load_items("medtune_sample") == items  # ships with medtune: no path needed


def test_heldout_questions_are_not_in_the_training_sample():
    train = {json.loads(line)["instruction"] for line in builtin_path("builtin:reasonmed-sample").read_text().splitlines()}
    assert not train & {item.question for item in load_items("medtune_sample", "builtin:reasonmed-heldout")}


def test_record_without_final_answer_line_names_file_and_line(tmp_path):
    path = tmp_path / "mcq.jsonl"
    path.write_text(json.dumps({"instruction": "Q?", "input": "A. a\nB. b\nC. c\nD. d", "output": "Because."}) + "\n")
    with pytest.raises(DataError, match=r"mcq.jsonl:1: output does not end"):
        load_reasonmed_mcq_local(path)
