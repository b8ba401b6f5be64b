"""Each record format normalises to the same chat messages; field problems name the field."""

from __future__ import annotations

import pytest

from medtune.data.formats import FORMATS, FileFormats, detect_format, normalise
from medtune.data.validation import RecordProblem, check_messages, control_token_pattern, with_system_prompt

CHAT = [
    {"role": "user", "content": "Which artery? A. LAD B. RCA"},
    {"role": "assistant", "content": "Inferior leads point to the RCA.\nThe answer is B."},
]

RECORDS = {
    "reasonmed": {"instruction": "Which artery?", "input": "A. LAD B. RCA", "output": CHAT[1]["content"]},
    "conversations": {"conversations": CHAT},
    "sharegpt": {
        "conversations": [{"from": "human", "value": CHAT[0]["content"]}, {"from": "gpt", "value": CHAT[1]["content"]}]
    },
    "messages": {"messages": CHAT},
    "prompt_completion": {"prompt": CHAT[0]["content"], "completion": CHAT[1]["content"]},
}


@pytest.mark.parametrize("name", list(RECORDS))
def test_every_format_normalises_to_the_same_chat(name):
    record = RECORDS[name]
    assert detect_format(record) == name
    messages = normalise(name, record)
    if name == "reasonmed":  # question and options are joined by a newline
        assert messages[0]["content"] == "Which artery?\nA. LAD B. RCA"
        messages[0]["content"] = CHAT[0]["content"]
    assert messages == CHAT


def test_every_registered_format_has_a_test_record():
    assert set(FORMATS) == set(RECORDS)


def test_reasonmed_input_is_optional():
    assert normalise("reasonmed", {"instruction": "Q?", "output": "A."})[0]["content"] == "Q?"
    assert normalise("reasonmed", {"instruction": "Q?", "input": None, "output": "A."})[0]["content"] == "Q?"


def test_sharegpt_roles_and_system_turn():
    record = {
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello"},
        ]
    }
    assert [m["role"] for m in normalise("sharegpt", record)] == ["system", "user", "assistant"]


def test_openai_content_parts_are_joined():
    record = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Part one, "}, {"type": "text", "text": "part two"}]},
            {"role": "assistant", "content": "OK"},
        ]
    }
    assert normalise("messages", record)[0]["content"] == "Part one, part two"


def test_conversational_prompt_completion():
    record = {"prompt": [CHAT[0]], "completion": [CHAT[1]]}
    assert normalise("prompt_completion", record) == CHAT


def test_detect_format_unknown_keys():
    assert detect_format({"question": "q", "answer": "a"}) is None


@pytest.mark.parametrize(
    ("name", "record", "reason", "field"),
    [
        ("reasonmed", {"instruction": "Q?", "input": ""}, "missing_field", "output"),
        ("reasonmed", {"instruction": "Q?", "output": 7}, "wrong_type", "output"),
        ("reasonmed", {"instruction": ["Q?"], "output": "A"}, "wrong_type", "instruction"),
        ("messages", {"messages": "user: hi"}, "wrong_type", "messages"),
        ("messages", {"messages": [{"role": "user"}]}, "missing_field", "messages[0].content"),
        ("messages", {"messages": [{"role": "user", "content": 3}]}, "wrong_type", "messages[0].content"),
        ("messages", {"messages": [{"role": "doctor", "content": "x"}]}, "bad_role", "messages[0].role"),
        ("messages", {"messages": ["hi"]}, "wrong_type", "messages[0]"),
        ("sharegpt", {"conversations": [{"from": "robot", "value": "x"}]}, "bad_role", "conversations[0].from"),
        ("prompt_completion", {"prompt": "Q"}, "missing_field", "completion"),
    ],
)
def test_field_problems_name_reason_and_field(name, record, reason, field):
    with pytest.raises(RecordProblem) as caught:
        normalise(name, record)
    assert (caught.value.reason, caught.value.field) == (reason, field)


def test_auto_format_is_chosen_per_file_from_its_first_record():
    formats = FileFormats("auto")
    assert formats.normalise(RECORDS["messages"], "a.jsonl", "a.jsonl:1") == CHAT
    assert formats.normalise(RECORDS["reasonmed"], "b.jsonl", "b.jsonl:1") == normalise("reasonmed", RECORDS["reasonmed"])
    with pytest.raises(RecordProblem) as caught:  # another file may have another format, the same file not
        formats.normalise(RECORDS["reasonmed"], "a.jsonl", "a.jsonl:2")
    assert caught.value.reason == "mixed_format"
    assert caught.value.describe() == (
        "this record is in the reasonmed format, but the file's format is messages, chosen from its first record "
        "(a.jsonl:1); put each format in its own file, or convert this record"
    )
    # A broken record of the file's own format keeps its own reason.
    with pytest.raises(RecordProblem) as broken:
        formats.normalise({"messages": [{"role": "user"}]}, "a.jsonl", "a.jsonl:3")
    assert (broken.value.reason, broken.value.field) == ("missing_field", "messages[0].content")
    assert formats.formats() == {"a.jsonl": "messages", "b.jsonl": "reasonmed"}


def test_configured_format_is_used_for_every_file():
    formats = FileFormats("messages")
    with pytest.raises(RecordProblem) as caught:
        formats.normalise(RECORDS["reasonmed"], "a.jsonl", "a.jsonl:1")
    assert (caught.value.reason, caught.value.field) == ("missing_field", "messages")
    assert formats.formats() == {"a.jsonl": "messages"}


def test_check_messages_rules():
    assert check_messages([{"role": "system", "content": "  "}, *CHAT]) == CHAT  # empty system dropped
    stripped = check_messages([{"role": "user", "content": "  Q  "}, {"role": "assistant", "content": "\nA\n"}])
    assert stripped == [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    cases = {
        "bad_order": [CHAT[1], CHAT[0]],
        "empty_reply": [CHAT[0], {"role": "assistant", "content": " "}],
        "empty_prompt": [{"role": "user", "content": ""}, CHAT[1]],
        "bad_role": [{"role": "tool", "content": "x"}, CHAT[1]],
    }
    for reason, messages in cases.items():
        with pytest.raises(RecordProblem) as caught:
            check_messages(messages)
        assert caught.value.reason == reason
    assert check_messages([*CHAT, CHAT[0], CHAT[1]])  # multi-turn is fine
    with pytest.raises(RecordProblem, match="roles"):
        check_messages([*CHAT, CHAT[0]])  # must end with a reply
    pattern = control_token_pattern(["<|im_end|>", "<|im_start|>"])
    with pytest.raises(RecordProblem) as caught:
        check_messages([CHAT[0], {"role": "assistant", "content": "B<|im_end|>"}], pattern)
    assert caught.value.reason == "special_token"


def test_system_prompt_only_when_record_has_none():
    assert with_system_prompt(CHAT, "Be careful.")[0] == {"role": "system", "content": "Be careful."}
    own = [{"role": "system", "content": "Own."}, *CHAT]
    assert with_system_prompt(own, "Be careful.") == own
    assert with_system_prompt(CHAT, None) == CHAT
