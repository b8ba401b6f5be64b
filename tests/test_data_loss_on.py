"""data.loss_on: final_answer puts the loss on the final answer sentence only, through the real templates."""

from __future__ import annotations

import copy
import json

import pytest
from test_data_prepare import make_config

from medtune.rundir import RunDir
from medtune.data.prepare import load_prepared, prepare_data
from medtune.data.rendering import IGNORE_INDEX, ChatRenderer
from medtune.tokenizer import fix_pad_token

REPLY = "Fever with neck stiffness points to meningitis.\n\nThe answer is B."
CHAT = [{"role": "user", "content": "Fever and neck stiffness: A. Migraine B. Meningitis?"},
        {"role": "assistant", "content": REPLY}]


@pytest.mark.parametrize("which", ["smollm2", "llama3"])
def test_final_answer_labels_start_at_the_answer_sentence(which, smollm2_tokenizer, llama3_tokenizer):
    tokenizer = copy.deepcopy(smollm2_tokenizer if which == "smollm2" else llama3_tokenizer)
    fix_pad_token(tokenizer)
    renderer = ChatRenderer.from_tokenizer(tokenizer)
    [(ids, full)] = renderer.encode([CHAT])
    [(same_ids, answer_only)] = renderer.encode([CHAT], label_from="The answer is")
    assert list(ids) == list(same_ids)
    labelled = [int(t) for t, label in zip(ids, answer_only) if label != IGNORE_INDEX]
    text = tokenizer.decode(labelled)
    # The answer sentence and the end-of-turn token, nothing of the reasoning.
    assert text.strip().startswith("The answer is B.") and "meningitis" not in text
    assert labelled[-1] == renderer.eot_id
    assert 0 < len(labelled) < int((full != IGNORE_INDEX).sum())
    # Labelled positions are a suffix of the full reply's labelled positions.
    assert all(full[i] != IGNORE_INDEX for i, label in enumerate(answer_only) if label != IGNORE_INDEX)


def test_prepare_drops_and_counts_replies_without_an_answer(tmp_path, tiny_llama_dir):
    data = tmp_path / "d.jsonl"
    rows = [{"instruction": f"Question {i}: fever and neck stiffness?", "output": f"Reasoning {i}.\n\nThe answer is B."}
            for i in range(6)]
    rows.append({"instruction": "No final sentence here?", "output": "Just reasoning, no conclusion."})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = make_config(tmp_path, tiny_llama_dir, [str(data)], loss_on="final_answer", val_size=1)
    report = prepare_data(config, RunDir.of(config)).report
    assert report["kept"] == 6 and report["train"] == 5 and report["dropped"] == {"no_final_answer": 1}
    assert report["examples"]["no_final_answer"][0].endswith("d.jsonl:7: a reply has no \"The answer is ...\" sentence to put the loss on")
    train = load_prepared(RunDir.of(config))["train"]
    for row in train:
        labelled = [t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE_INDEX]
        assert 2 < len(labelled) < 20  # the answer sentence, not the whole reply
