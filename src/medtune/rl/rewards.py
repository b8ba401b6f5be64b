"""Verifiable rewards: is the final answer right, is it stated where eval looks, how long is it.

Every reward reads a completion with `medtune.eval.answers.extract_answer`, the function the
eval stage scores cot replies with, so what RL is paid for is exactly what eval counts. Each is a
small function of one completion; `reward_functions` wraps them in the batch signature TRL's
GRPOTrainer calls (`prompts, completions, **dataset_columns`), reading the per-prompt columns
`gold`, `options` (JSON: label -> text) and `weight` (the class-balance weight, see
`medtune.rl.prompts.class_weights`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from medtune.eval.answers import extract_answer

# Where eval looks first: an explicit "The answer is X." (answers._EXPLICIT's first pattern family).
_STATED = re.compile(r"(?:final\s+answer|the\s+answer)\s*(?:is|:)", re.IGNORECASE)


def correctness_reward(completion: str, gold: str, options: dict[str, str]) -> float:
    """1.0 when the answer eval would read from `completion` is `gold`, else 0.0 (no answer is wrong)."""
    return 1.0 if extract_answer(completion, options) == gold else 0.0


def format_reward(completion: str, options: dict[str, str]) -> float:
    """1.0 when the completion ends on a stated answer eval can read ("The answer is X." as its last
    sentence), 0.5 when eval finds an answer elsewhere in it, 0.0 when it finds none."""
    answer = extract_answer(completion, options)
    if answer is None:
        return 0.0
    tail = completion.strip().splitlines()[-1] if completion.strip() else ""
    return 1.0 if _STATED.search(tail) and extract_answer(tail, options) == answer else 0.5


def length_penalty(completion_tokens: int, budget: int) -> float:
    """Minus the share of the completion budget used: 0 for an empty reply, -1 at the budget (a reply
    cut off at the limit also gets no answer, which correctness already punishes)."""
    if budget <= 0:
        raise ValueError(f"length_penalty: the budget must be positive, got {budget}")
    return -min(completion_tokens, budget) / budget


def completion_text(completion: Any) -> str:
    """The text of one completion as TRL hands it: a string, or a list of chat messages."""
    if isinstance(completion, str):
        return completion
    return "".join(str(message.get("content", "")) for message in completion)


def reward_functions(
    *, format_weight: float, length_weight: float, max_completion_length: int
) -> tuple[list[Callable[..., list[float]]], list[float]]:
    """The TRL reward functions and their weights: correctness (class-weighted), format, length.

    Terms with weight 0 are left out (no wasted computation, no flat columns in the log).
    """
    def correct(prompts: Sequence[Any], completions: Sequence[Any], gold: Sequence[str],
                options: Sequence[str], weight: Sequence[float] | None = None, **_: Any) -> list[float]:
        weights = weight or [1.0] * len(gold)
        return [w * correctness_reward(completion_text(c), g, json.loads(o))
                for c, g, o, w in zip(completions, gold, options, weights)]

    def stated(prompts: Sequence[Any], completions: Sequence[Any], options: Sequence[str], **_: Any) -> list[float]:
        return [format_reward(completion_text(c), json.loads(o)) for c, o in zip(completions, options)]

    def length(prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Sequence[Sequence[int]],
               **_: Any) -> list[float]:
        return [length_penalty(len(ids), max_completion_length) for ids in completion_ids]

    correct.__name__, stated.__name__, length.__name__ = "correct", "format", "length"
    functions, weights = [correct], [1.0]
    if format_weight > 0:
        functions.append(stated)
        weights.append(format_weight)
    if length_weight > 0:
        functions.append(length)
        weights.append(length_weight)
    return functions, weights
