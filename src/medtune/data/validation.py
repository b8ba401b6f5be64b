"""Checks on every record, the reasons a record can be dropped, and the tally of what was dropped.

Each problem found in a record is a `RecordProblem` with a reason code from `REASONS`. Under the
`skip` policy the tally counts it (and keeps the first few file:line examples); under `error` the
first one stops the run with a `DataError` naming file:line and field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from medtune.errors import DataError

Messages = list[dict[str, str]]

# Reason code -> what it means (shown in the report and the summary table).
REASONS: dict[str, str] = {
    "invalid_utf8": "not valid UTF-8",
    "invalid_json": "not valid JSON, or not a JSON object",
    "unknown_format": "keys match no known record format",
    "mixed_format": "in another format than its file (data.format auto chooses one format per file, from its first record)",
    "missing_field": "a required field is missing",
    "wrong_type": "a field has the wrong type",
    "bad_role": "unknown role",
    "bad_order": "roles out of order (want: [system], user, assistant, ..., ending with assistant)",
    "empty_prompt": "empty user message",
    "empty_reply": "empty assistant reply",
    "special_token": "text contains a control token of the chat template",
    "duplicate": "exact duplicate of an earlier record",
    "contaminated": "question matches an evaluation benchmark item",
    "rl_prompt": "one of RL's prompts, kept out of SFT by rl.hold_out_of_sft",
    "too_long": "longer than data.max_length tokens",
    "no_final_answer": "data.loss_on is final_answer but a reply has no final answer sentence",
}
EXAMPLES_PER_REASON = 5
ROLES = ("system", "user", "assistant")


class RecordProblem(Exception):
    """A record that cannot be used: a reason code from REASONS, the field at fault, and details."""

    def __init__(self, reason: str, detail: str, field: str | None = None):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.field = field

    def describe(self) -> str:
        where = f"field '{self.field}': " if self.field else ""
        return f"{where}{self.detail}"


@dataclass
class Tally:
    """Counts of dropped records by reason, with the first few file:line examples of each."""

    dropped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, location: str, detail: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < EXAMPLES_PER_REASON:
            shown.append(f"{location}: {detail}")

    @property
    def total(self) -> int:
        return sum(self.dropped.values())


def reject(problem: RecordProblem, location: str, policy: str, tally: Tally) -> None:
    """Apply the `data.invalid` policy to a bad record: count it (skip) or stop (error)."""
    if policy == "error":
        raise DataError(
            f"{location}: {REASONS.get(problem.reason.split(':')[0], problem.reason)}: {problem.describe()} "
            "(fix the record, or set data.invalid=skip to drop bad records and count them)"
        )
    tally.add(problem.reason, location, problem.describe())


def control_token_pattern(tokens: list[str]) -> re.Pattern[str] | None:
    """A regex matching any of the tokenizer's control tokens written as text, longest first."""
    tokens = sorted({t for t in tokens if t}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, tokens))) if tokens else None


def check_messages(messages: Messages, control_tokens: re.Pattern[str] | None = None) -> Messages:
    """Validate normalised chat messages; return them with content stripped and empty system turns removed.

    Rules: roles are system/user/assistant; at most one system message, first; then user and
    assistant alternate, starting with user and ending with assistant; no empty user message or
    reply; no control-token text (e.g. a literal <|im_end|>), which would corrupt the rendering.
    Raises RecordProblem.
    """
    cleaned: Messages = []
    origin: list[int] = []  # index in `messages` of each cleaned message, so problems name the record's own turn
    for index, message in enumerate(messages):
        role, content = message["role"], message["content"].strip()
        if role not in ROLES:
            raise RecordProblem("bad_role", f"role {role!r} (allowed: {', '.join(ROLES)})", f"messages[{index}].role")
        if role == "system" and not content:
            continue
        cleaned.append({"role": role, "content": content})
        origin.append(index)
    roles = [m["role"] for m in cleaned]
    body = roles[1:] if roles and roles[0] == "system" else roles
    expected = ["user", "assistant"] * (len(body) // 2 + 1)
    if not body or body != expected[: len(body)] or body[-1] != "assistant":
        raise RecordProblem("bad_order", f"roles {roles}", "messages")
    for message, index in zip(cleaned, origin):
        if not message["content"]:
            reason = "empty_reply" if message["role"] == "assistant" else "empty_prompt"
            raise RecordProblem(reason, f"{message['role']} message is empty", f"messages[{index}].content")
        if control_tokens is not None and (found := control_tokens.search(message["content"])):
            raise RecordProblem(
                "special_token",
                f"{message['role']} text contains {found.group(0)!r}, a control token of the chat template",
                f"messages[{index}].content",
            )
    return cleaned


def with_system_prompt(messages: Messages, system_prompt: str | None) -> Messages:
    """Prepend `system_prompt` unless the record brings its own system message."""
    if system_prompt and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": system_prompt.strip()}, *messages]
    return messages
