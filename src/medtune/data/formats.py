"""Record formats: each turns one raw record (a dict) into chat messages.

A format is one normaliser function registered in `FORMATS` with the keys that identify it.
Adding a format = one function + one `RecordFormat(...)` entry.
Normalisers check presence and types of the fields they read and raise `RecordProblem`
(missing_field, wrong_type, bad_role); message-level rules live in `validation.check_messages`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from medtune.data.validation import Messages, RecordProblem


@dataclass(frozen=True)
class RecordFormat:
    name: str
    keys: tuple[str, ...]  # top-level keys that identify the format
    normalise: Callable[[dict[str, Any]], Messages]
    example: str  # shown in errors and docs
    # (record, index of a normalised message, "content" | "role") -> the record's own field for it,
    # so a problem found after normalising names the field the user wrote.
    field_of: Callable[[dict[str, Any], int, str], str] = lambda record, index, part: f"messages[{index}].{part}"


def _field(record: dict[str, Any], key: str, types: type | tuple[type, ...], *, required: bool = True) -> Any:
    if key not in record or record[key] is None:
        if required:
            raise RecordProblem("missing_field", f"missing (present: {', '.join(sorted(record)) or 'none'})", key)
        return None
    value = record[key]
    if not isinstance(value, types):
        want = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise RecordProblem("wrong_type", f"expected {want}, got {type(value).__name__}", key)
    return value


def _text(value: Any, where: str) -> str:
    """Message content: a string, or OpenAI-style content parts [{type: text, text: ...}]."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
        parts = [p.get("text") for p in value]
        if all(isinstance(p, str) for p in parts):
            return "".join(parts)
    raise RecordProblem("wrong_type", f"expected a string, got {type(value).__name__}", where)


def _turns(turns: Any, key: str, role_key: str, text_key: str, roles: dict[str, str]) -> Messages:
    if not isinstance(turns, list):
        raise RecordProblem("wrong_type", f"expected a list of turns, got {type(turns).__name__}", key)
    messages = []
    for index, turn in enumerate(turns):
        where = f"{key}[{index}]"
        if not isinstance(turn, dict):
            raise RecordProblem("wrong_type", f"expected an object, got {type(turn).__name__}", where)
        for needed in (role_key, text_key):
            if needed not in turn or turn[needed] is None:
                raise RecordProblem("missing_field", "missing", f"{where}.{needed}")
        role = turn[role_key]
        if not isinstance(role, str):
            raise RecordProblem("wrong_type", f"expected a string, got {type(role).__name__}", f"{where}.{role_key}")
        if role.lower() not in roles:
            raise RecordProblem("bad_role", f"role {role!r} (allowed: {', '.join(sorted(roles))})", f"{where}.{role_key}")
        messages.append({"role": roles[role.lower()], "content": _text(turn[text_key], f"{where}.{text_key}")})
    return messages


CHAT_ROLES = {"system": "system", "user": "user", "assistant": "assistant"}
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
}


def normalise_reasonmed(record: dict[str, Any]) -> Messages:
    """ReasonMed: `instruction` (question) + optional `input` (options/context) -> user; `output` -> assistant."""
    instruction = _field(record, "instruction", str)
    extra = _field(record, "input", str, required=False) or ""
    output = _field(record, "output", str)
    question = f"{instruction.strip()}\n{extra.strip()}" if extra.strip() else instruction
    return [{"role": "user", "content": question}, {"role": "assistant", "content": output}]


def normalise_conversations(record: dict[str, Any]) -> Messages:
    """The seed project's JSONL: {"conversations": [{"role": ..., "content": ...}, ...]}."""
    return _turns(_field(record, "conversations", list), "conversations", "role", "content", CHAT_ROLES)


def normalise_sharegpt(record: dict[str, Any]) -> Messages:
    """ShareGPT: {"conversations": [{"from": "human"|"gpt"|"system", "value": ...}, ...]}."""
    return _turns(_field(record, "conversations", list), "conversations", "from", "value", SHAREGPT_ROLES)


def normalise_messages(record: dict[str, Any]) -> Messages:
    """OpenAI chat: {"messages": [{"role": ..., "content": ...}, ...]}."""
    return _turns(_field(record, "messages", list), "messages", "role", "content", CHAT_ROLES)


def normalise_prompt_completion(record: dict[str, Any]) -> Messages:
    """{"prompt": ..., "completion": ...}: strings, or (TRL conversational style) lists of messages."""
    prompt = _field(record, "prompt", (str, list))
    completion = _field(record, "completion", (str, list))
    if isinstance(prompt, str):
        head = [{"role": "user", "content": prompt}]
    else:
        head = _turns(prompt, "prompt", "role", "content", CHAT_ROLES)
    if isinstance(completion, str):
        tail = [{"role": "assistant", "content": completion}]
    else:
        tail = _turns(completion, "completion", "role", "content", CHAT_ROLES)
    return head + tail


def _reasonmed_field(record: dict[str, Any], index: int, part: str) -> str:
    if index == 0:
        return "instruction" if not (record.get("input") or "").strip() else "instruction/input"
    return "output"


def _turn_field(key: str, role_key: str, text_key: str) -> Callable[[dict[str, Any], int, str], str]:
    return lambda record, index, part: f"{key}[{index}].{text_key if part == 'content' else role_key}"


def _prompt_completion_field(record: dict[str, Any], index: int, part: str) -> str:
    prompt = record.get("prompt")
    prompt_turns = 1 if isinstance(prompt, str) else len(prompt) if isinstance(prompt, list) else 0
    key, turn = ("prompt", index) if index < prompt_turns else ("completion", index - prompt_turns)
    return key if isinstance(record.get(key), str) else f"{key}[{turn}].{part}"


FORMATS: dict[str, RecordFormat] = {
    fmt.name: fmt
    for fmt in (
        RecordFormat("reasonmed", ("instruction", "output"), normalise_reasonmed,
                     '{"instruction": "...", "input": "A. ... B. ...", "output": "... The answer is B."}',
                     _reasonmed_field),
        RecordFormat("conversations", ("conversations",), normalise_conversations,
                     '{"conversations": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}',
                     _turn_field("conversations", "role", "content")),
        RecordFormat("sharegpt", ("conversations",), normalise_sharegpt,
                     '{"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", "value": "..."}]}',
                     _turn_field("conversations", "from", "value")),
        RecordFormat("messages", ("messages",), normalise_messages,
                     '{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}'),
        RecordFormat("prompt_completion", ("prompt", "completion"), normalise_prompt_completion,
                     '{"prompt": "...", "completion": "..."}', _prompt_completion_field),
    )
}


def detect_format(record: dict[str, Any]) -> str | None:
    """The format whose identifying keys the record has, or None.

    `conversations` is shared by the seed format (role/content) and ShareGPT (from/value): the
    first turn's keys decide.
    """
    if "conversations" in record:
        turns = record["conversations"]
        first = turns[0] if isinstance(turns, list) and turns and isinstance(turns[0], dict) else {}
        return "sharegpt" if "from" in first or "value" in first else "conversations"
    for fmt in FORMATS.values():
        if fmt.name not in ("conversations", "sharegpt") and all(key in record for key in fmt.keys):
            return fmt.name
    return None


def normalise(format_name: str, record: dict[str, Any]) -> Messages:
    """Turn one raw record into chat messages with the named format. Raises RecordProblem."""
    return FORMATS[format_name].normalise(record)


@dataclass
class FileFormats:
    """The record format of each source file: `data.format`, or under `auto` the format of the
    file's first record whose keys match one (files may differ, records within a file may not).

    `chosen` maps each source to (format, location of the record that chose it).
    """

    configured: str
    chosen: dict[str, tuple[str, str]] = field(default_factory=dict)

    def normalise(self, record: dict[str, Any], source: str, location: str) -> Messages:
        """Chat messages for one record of `source`. Raises RecordProblem; under auto, a record
        in another format than its file's is `mixed_format`, naming the format the file got and where."""
        if self.configured != "auto":
            self.chosen.setdefault(source, (self.configured, location))
            return normalise(self.configured, record)
        if source not in self.chosen:
            detected = detect_format(record)
            if detected is None:
                raise RecordProblem(
                    "unknown_format", f"keys {sorted(record)}; set data.format to one of: {', '.join(FORMATS)}"
                )
            self.chosen[source] = (detected, location)
        name, first = self.chosen[source]
        try:
            return normalise(name, record)
        except RecordProblem as problem:
            own = detect_format(record)
            if own is None or own == name:
                raise
            raise RecordProblem(
                "mixed_format",
                f"this record is in the {own} format, but the file's format is {name}, chosen from its first "
                f"record ({first}); put each format in its own file, or convert this record",
            ) from None

    def source_field(self, source: str, record: dict[str, Any], field: str | None, system_added: bool) -> str | None:
        """The record's own field for a problem found on its normalised messages (`messages[i].content`),
        e.g. ReasonMed's `output` for an empty reply. Other fields come back unchanged."""
        found = re.fullmatch(r"messages\[(\d+)\]\.(content|role)", field or "")
        if not found or source not in self.chosen:
            return field
        index = int(found.group(1)) - system_added
        if index < 0:
            return "data.system_prompt"
        return FORMATS[self.chosen[source][0]].field_of(record, index, found.group(2))

    def formats(self) -> dict[str, str]:
        """source -> format name, as recorded in the data report."""
        return {source: name for source, (name, _) in self.chosen.items()}


def looks_like(record: Any) -> str | None:
    """The format a raw record's keys suggest (for error messages), or None."""
    return detect_format(record) if isinstance(record, dict) else None
