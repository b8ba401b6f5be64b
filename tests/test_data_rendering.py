"""Assistant-only labels from real chat templates: SmolLM2's ChatML and a Llama-3-style template."""

from __future__ import annotations

import copy

import pyarrow as pa
import pytest

from medtune.data.rendering import IGNORE_INDEX, KEPT, TOO_LONG, TRUNCATED, ChatRenderer, TemplateError, tokenize_table
from medtune.tokenizer import fix_pad_token

SINGLE = [
    {"role": "user", "content": "A patient has fever and neck stiffness. Most likely? A. Migraine B. Meningitis"},
    {"role": "assistant", "content": "Fever with meningism suggests meningitis.\nThe answer is B."},
]
MULTI = [
    {"role": "system", "content": "You are a careful medical tutor."},
    {"role": "user", "content": "Normal serum sodium? (mmol/L, 25 °C, µ-units irrelevant)"},
    {"role": "assistant", "content": "135 to 145 mmol/L 🙂"},
    {"role": "user", "content": "And potassium?"},
    {"role": "assistant", "content": "3.5 to 5.0 mmol/L."},
]


@pytest.fixture(params=["smollm2", "llama3"])
def tokenizer(request, smollm2_tokenizer, llama3_tokenizer):
    # A copy: the session fixtures keep their shipped pad token for other tests.
    tok = copy.deepcopy(smollm2_tokenizer if request.param == "smollm2" else llama3_tokenizer)
    fix_pad_token(tok)
    return tok


def labelled_runs(ids, labels):
    """Contiguous runs of labelled tokens (each reply + its end-of-turn token)."""
    runs, current = [], []
    for token, label in zip(ids, labels):
        if label != IGNORE_INDEX:
            assert label == token  # labels are the input ids themselves (the trainer shifts)
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


@pytest.mark.parametrize("messages", [SINGLE, MULTI], ids=["single-turn", "multi-turn+system"])
def test_labels_cover_exactly_each_reply_and_its_end_of_turn_token(tokenizer, messages):
    renderer = ChatRenderer.from_tokenizer(tokenizer)
    [(ids, labels)] = renderer.encode([messages])

    # Same tokens as the library's own rendering + tokenization.
    expected = tokenizer.apply_chat_template(messages, tokenize=True)["input_ids"]
    assert list(ids) == list(expected)

    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    runs = labelled_runs(ids, labels)
    assert len(runs) == len(replies)
    for run, reply in zip(runs, replies):
        assert run[-1] == renderer.eot_id  # the model learns to stop
        assert tokenizer.decode(run) == reply + renderer.eot_token
    # Nothing else is labelled: system, user turns, role headers, BOS, trailing newline.
    assert sum(label != IGNORE_INDEX for label in labels) == sum(len(run) for run in runs)
    assert labels[0] == IGNORE_INDEX


def test_pad_token_is_not_the_end_of_turn_or_eos_token(tokenizer):
    renderer = ChatRenderer.from_tokenizer(tokenizer)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.pad_token_id != renderer.eot_id


def test_end_of_turn_tokens_of_both_templates(smollm2_tokenizer, llama3_tokenizer):
    assert ChatRenderer.from_tokenizer(smollm2_tokenizer).eot_token == "<|im_end|>"
    assert ChatRenderer.from_tokenizer(llama3_tokenizer).eot_token == "<|eot_id|>"


def test_rendering_matches_apply_chat_template(tokenizer):
    renderer = ChatRenderer.from_tokenizer(tokenizer)
    for messages in (SINGLE, MULTI):
        assert renderer.render([messages], add_generation_prompt=False)[0] == tokenizer.apply_chat_template(
            messages, tokenize=False
        )
        prompt = messages[:-1]
        assert renderer.render([prompt], add_generation_prompt=True)[0] == tokenizer.apply_chat_template(
            prompt, tokenize=False, add_generation_prompt=True
        )


def test_template_that_rewrites_earlier_turns_is_rejected(smollm2_tokenizer):
    tok = copy.deepcopy(smollm2_tokenizer)
    # Marks the final message: the prompt rendered alone is then not a prefix of the whole chat.
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if loop.last %}FINAL {% endif %}"
        "{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    renderer = ChatRenderer.from_tokenizer(tok)
    with pytest.raises(TemplateError, match=r"record data.jsonl:7.*not a prefix.*model.chat_template"):
        renderer.encode([SINGLE], sources=["data.jsonl:7"])


def _table(conversations):
    import json

    return pa.table(
        {
            "messages": [json.dumps(c) for c in conversations],
            "source": [f"f.jsonl:{i + 1}" for i in range(len(conversations))],
        }
    )


def test_tokenize_table_truncates_or_marks_too_long(tokenizer):
    renderer = ChatRenderer.from_tokenizer(tokenizer)
    [(ids, labels)] = renderer.encode([SINGLE])
    prompt_len = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    limit = prompt_len + 3  # room for three reply tokens

    dropped = tokenize_table(_table([SINGLE]), renderer, limit, truncate=False).to_pylist()[0]
    assert dropped["status"] == TOO_LONG and dropped["full_length"] == len(ids) and dropped["input_ids"] == []

    cut = tokenize_table(_table([SINGLE]), renderer, limit, truncate=True).to_pylist()[0]
    assert cut["status"] == TRUNCATED and cut["length"] == limit
    assert cut["input_ids"] == list(ids[:limit]) and cut["labels"] == list(labels[:limit])

    # Truncation that would leave no reply token: dropped, not kept as a label-less example.
    none_left = tokenize_table(_table([SINGLE]), renderer, prompt_len, truncate=True).to_pylist()[0]
    assert none_left["status"] == TOO_LONG

    whole = tokenize_table(_table([SINGLE, MULTI]), renderer, 4096, truncate=True).to_pylist()
    assert [row["status"] for row in whole] == [KEPT, KEPT]
    assert whole[0]["labels"] == list(labels) and whole[1]["source"] == "f.jsonl:2"
