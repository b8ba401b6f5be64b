"""RL prompts with gold answers from the sources that have them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medtune.errors import DataError
from medtune.rl.prompts import class_weights, load_prompts, options_of, split_prompts
from medtune.tasks import user_message

PUBMEDQA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pubmedqa"


def test_reasonmed_records_with_a_final_option_are_kept_and_the_rest_counted(tmp_path):
    records = [
        {"instruction": "A woman has fever and neck stiffness.\nA. Migraine\nB. Meningitis\nC. Tension headache\nD. Sinusitis",
         "input": "", "output": "Fever with meningism.\n\nThe answer is B."},
        {"instruction": "Which vitamin?", "input": "A. Vitamin A\nB. Vitamin C",
         "output": "Scurvy means vitamin C.\n\nThe answer is Vitamin C."},
        {"instruction": "Explain the Krebs cycle.", "input": "", "output": "It oxidises acetyl-CoA."},
    ]
    file = tmp_path / "reasonmed.jsonl"
    file.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    found = load_prompts([str(file)])
    assert [(p.gold, list(p.options)) for p in found.prompts] == [("B", ["A", "B", "C", "D"]), ("B", ["A", "B"])]
    assert found.skipped == {"reply states no final option": 1}
    assert found.prompts[0].row()["prompt"] == [{"role": "user", "content": found.prompts[0].user}]


def test_shipped_sample_gives_mcq_prompts():
    found = load_prompts(["builtin:reasonmed-sample"])
    assert found.prompts and all(set(p.options) == set("ABCD") and p.gold in "ABCD" for p in found.prompts)


@pytest.mark.skipif(not (PUBMEDQA / "ori_pqal.json").is_file(), reason="the PubMedQA release is not beside the checkout")
def test_pubmedqa_derived_source_gives_eval_cot_prompts():
    found = load_prompts([f"pubmedqa-reasoning:{PUBMEDQA}"])
    assert len(found.prompts) == 500 and not found.skipped
    assert {p.gold for p in found.prompts} == {"yes", "no", "maybe"}
    assert all(p.user.endswith('"The answer is X." where X is yes, no or maybe.') for p in found.prompts)


def test_medqa_release_file(tmp_path):
    file = tmp_path / "train.jsonl"
    row = {"question": "Which drug?", "options": {"A": "x", "B": "y", "C": "z", "D": "w"}, "answer_idx": "C"}
    file.write_text(json.dumps(row) + "\n")
    found = load_prompts([f"medqa:{file}"])
    (prompt,) = found.prompts
    assert prompt.gold == "C" and prompt.options == {"A": "x", "B": "y", "C": "z", "D": "w"}
    assert "Think step by step" in prompt.user


def test_no_prompt_is_an_error(tmp_path):
    file = tmp_path / "chat.jsonl"
    file.write_text(json.dumps({"instruction": "Hi", "input": "", "output": "Hello!"}) + "\n")
    with pytest.raises(DataError, match="no prompt with a gold answer"):
        load_prompts([str(file)])


def test_options_fall_back_to_yes_no_maybe():
    assert options_of("Question: is it?") == {"yes": "yes", "no": "no", "maybe": "maybe"}
    assert options_of("Q\nA. one\nB. two") == {"A": "one", "B": "two"}


def test_split_and_class_weights():
    from medtune.rl.prompts import RLPrompt

    prompts = [RLPrompt(str(i), "q", {"yes": "yes", "no": "no", "maybe": "maybe"}, g, "s")
               for i, g in enumerate(["yes"] * 6 + ["no"] * 3 + ["maybe"])]
    train, val = split_prompts(prompts, 0.3, seed=1)
    assert len(val) == 3 and len(train) == 7 and not {p.id for p in train} & {p.id for p in val}
    assert split_prompts(prompts, 0.3, seed=1) == (train, val)
    weights = class_weights(prompts)
    assert weights["maybe"] == pytest.approx(10 / 3) and weights["yes"] == pytest.approx(10 / 18)
    # every label carries the same total weight
    assert 6 * weights["yes"] == pytest.approx(3 * weights["no"]) == pytest.approx(weights["maybe"])
