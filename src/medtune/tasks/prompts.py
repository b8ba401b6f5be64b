"""The prompts every backend and every derived training source share."""

from __future__ import annotations

from medtune.tasks.registry import YES_NO_MAYBE, Item

LOGLIK_ANSWER_PREFIX = "The answer is"
"""Written at the start of the assistant turn in loglik mode; candidates (' yes', ' B') follow it."""


def user_message(item: Item, mode: str) -> str:
    """The user turn for an item: passage, question, options and the answer instruction for `mode`."""
    labels = list(item.options)
    yes_no = labels == list(YES_NO_MAYBE)
    parts = []
    if item.context:
        parts.append(f"Abstract:\n{item.context}")
    parts.append(f"Question: {item.question}")
    if not yes_no:
        parts.append("Options:\n" + "\n".join(f"{label}. {text}" for label, text in item.options.items()))
    choice_words = "yes, no, or maybe" if yes_no else "the letter of the correct option"
    if mode == "cot":
        final = "yes, no or maybe" if yes_no else "the option letter"
        parts.append(
            f"Think step by step, then finish with the sentence \"The answer is X.\" where X is {final}."
        )
    else:
        parts.append(f"Answer with {choice_words}.")
    return "\n\n".join(parts)
