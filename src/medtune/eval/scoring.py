"""Scoring items with a backend: loglik (which answer is most likely) and cot (reason, then answer).

Prompts (`prompt_style`): `chat`, the default, renders one user turn through the chat template
(see `tasks.user_message`) and opens the assistant turn; in loglik mode the assistant turn starts
with "The answer is" and the candidates are " A".." D" or " yes"/" no"/" maybe": when their first
tokens differ (the usual case, and exact when each is one token) a single forward pass per prompt
scores them all; otherwise each full continuation is scored. `lm_eval` reproduces
lm-evaluation-harness's multiple-choice scoring exactly: its plain-text prompt
(`tasks.lm_eval_prompt`), the tokenizer's default special tokens (what lm-eval's HF backend
adds), each choice tokenized as the tail of prompt + " " + choice, and the summed log-probability
of the whole continuation (one forward pass only when every choice is a single token).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from medtune.eval.answers import extract_answer
from medtune.tasks import LOGLIK_ANSWER_PREFIX, Item, user_message
from medtune.tasks.prompts import (
    LM_EVAL_TARGET_DELIMITER,
    PROMPT_STYLES,
    lm_eval_prompt,
)
from medtune.tokenizer import end_of_turn_token

MODES = ("loglik", "cot")


@dataclass
class Prediction:
    """One item's outcome: the predicted label (None = could not be parsed) and its evidence.

    `question` and `options` are the item as it was asked, so a report can show it without loading
    the benchmark again (and cannot show another draw of it)."""

    id: str
    answer: str
    predicted: str | None
    correct: bool
    scores: dict[str, float] | None = None  # loglik: label -> log-probability
    output: str | None = None  # cot: the generated reply
    question: str | None = None
    options: dict[str, str] | None = None

    @classmethod
    def of(cls, item: Item, predicted: str | None, **evidence: Any) -> Prediction:
        return cls(id=item.id, answer=item.answer, predicted=predicted, correct=predicted == item.answer,
                   question=item.question, options=dict(item.options), **evidence)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None or k == "predicted"}


def prompt_text(tokenizer, item: Item, mode: str, style: str = "chat") -> str:
    """The full prompt string for an item: chat template + (loglik) the fixed answer prefix, or
    (style lm_eval, loglik only) lm-eval's plain-text prompt."""
    if style == "lm_eval":
        if mode != "loglik":
            raise ValueError("prompt style lm_eval scores loglik only (lm-eval's tasks here are multiple choice)")
        return lm_eval_prompt(item)
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; use one of {', '.join(PROMPT_STYLES)}")
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": user_message(item, mode)}], tokenize=False, add_generation_prompt=True
    )
    return text + LOGLIK_ANSWER_PREFIX if mode == "loglik" else text


def encode(tokenizer, text: str, style: str = "chat") -> list[int]:
    # chat: the template already carries BOS where the model wants one, adding special tokens would
    # double it. lm_eval: no template, so the tokenizer's defaults apply, as in lm-eval's HF backend
    # (tok_encode with add_bos_token unset): BOS for Llama-style tokenizers, nothing for SmolLM2.
    return list(tokenizer(text, add_special_tokens=style == "lm_eval")["input_ids"])


def prompt_ids(tokenizer, item: Item, mode: str, style: str = "chat") -> list[int]:
    """The prompt's token ids as every backend receives them."""
    return encode(tokenizer, prompt_text(tokenizer, item, mode, style), style)


def candidate_tokens(tokenizer, prompt: str, labels: Sequence[str], style: str = "chat") -> list[list[int]]:
    """Token ids of ' <label>' as the tokenizer would split it right after `prompt`.

    lm_eval style: always the tail of encode(prompt + " " + label) after len(encode(prompt)),
    lm-eval's own split (its _encode_pair), even where the last prompt token merges with the label.
    """
    base = encode(tokenizer, prompt, style)
    candidates = []
    for label in labels:
        full = encode(tokenizer, prompt + LM_EVAL_TARGET_DELIMITER + label, style)  # ' ' in both styles
        if style == "lm_eval":
            candidates.append(full[len(base):])
        elif full[: len(base)] == base and len(full) > len(base):
            candidates.append(full[len(base):])
        else:  # the label merged with the prompt's last token: fall back to tokenizing it alone
            candidates.append(encode(tokenizer, " " + label))
    return candidates


def stop_token_ids(tokenizer) -> list[int]:
    """End-of-turn and EOS ids: generation stops at whichever the template emits."""
    ids = []
    try:
        ids.append(tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer)))
    except Exception:  # a template without an end-of-turn token still has EOS
        pass
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return list(dict.fromkeys(i for i in ids if i is not None))


def _batches(order: list[int], size: int) -> list[list[int]]:
    return [order[i : i + size] for i in range(0, len(order), size)]


def score_loglik(backend, items: Sequence[Item], on_progress: Callable[[int], None] = lambda n: None,
                 *, prompt_style: str = "chat") -> list[Prediction]:
    """Pick, for each item, the answer label whose continuation has the highest log-probability.

    Every item is scored over its own options: a set that mixes four- and five-option questions is
    scored in groups of items with the same labels, and the predictions come back in item order."""
    by_labels: dict[tuple[str, ...], list[int]] = {}
    for index, item in enumerate(items):
        by_labels.setdefault(tuple(item.options), []).append(index)
    predictions: dict[int, Prediction] = {}
    for indices in by_labels.values():
        group = [items[i] for i in indices]
        for index, prediction in zip(indices, _score_loglik_same_labels(backend, group, on_progress, prompt_style)):
            predictions[index] = prediction
    return [predictions[i] for i in range(len(items))]


def _score_loglik_same_labels(backend, items: Sequence[Item], on_progress: Callable[[int], None],
                              prompt_style: str) -> list[Prediction]:
    """score_loglik for items that share one list of answer labels (one candidate set)."""
    tokenizer = backend.tokenizer
    labels = list(items[0].options)
    prompts = [prompt_ids(tokenizer, item, "loglik", prompt_style) for item in items]
    candidates = candidate_tokens(tokenizer, prompt_text(tokenizer, items[0], "loglik", prompt_style), labels,
                                  prompt_style)
    first = [c[0] for c in candidates]
    if prompt_style == "lm_eval":  # lm-eval sums every token of a choice: one pass is exact only for 1-token choices
        first_token_only = all(len(c) == 1 for c in candidates) and len(set(first)) == len(first)
    else:
        first_token_only = len(set(first)) == len(first)
    # Longest first: batches hold similar lengths (little padding) and memory peaks show up at once.
    order = sorted(range(len(items)), key=lambda i: -len(prompts[i]))
    scores: dict[int, list[float]] = {}
    for batch in _batches(order, backend.batch_size):
        batch_prompts = [prompts[i] for i in batch]
        if first_token_only:
            rows = backend.next_token_logprobs(batch_prompts, first)
        else:
            rows = [[] for _ in batch]
            for cand in candidates:
                values = backend.continuation_logprobs(batch_prompts, [cand] * len(batch))
                for row, value in zip(rows, values):
                    row.append(value)
        for index, row in zip(batch, rows):
            scores[index] = row
        on_progress(len(batch))
    predictions = []
    for index, item in enumerate(items):
        row = scores[index]
        best = labels[max(range(len(labels)), key=lambda k: row[k])]
        predictions.append(Prediction.of(item, best, scores={label: round(value, 4) for label, value in zip(labels, row)}))
    return predictions


def score_cot(backend, items: Sequence[Item], max_new_tokens: int,
              on_progress: Callable[[int], None] = lambda n: None) -> list[Prediction]:
    """Generate a step-by-step reply per item and extract its final answer (None = unparseable)."""
    if not items:
        return []
    tokenizer = backend.tokenizer
    prompts = [prompt_ids(tokenizer, item, "cot") for item in items]
    stops = stop_token_ids(tokenizer)
    order = sorted(range(len(items)), key=lambda i: -len(prompts[i]))
    outputs: dict[int, str] = {}
    for batch in _batches(order, backend.batch_size):
        for index, reply in zip(batch, backend.generate([prompts[i] for i in batch], max_new_tokens, stops)):
            outputs[index] = reply
        on_progress(len(batch))
    predictions = []
    for index, item in enumerate(items):
        predictions.append(Prediction.of(item, extract_answer(outputs[index], item.options), output=outputs[index]))
    return predictions


def score(backend, items: Sequence[Item], mode: str, *, max_new_tokens: int = 512,
          on_progress: Callable[[int], None] = lambda n: None, prompt_style: str = "chat") -> list[Prediction]:
    """Score `items` in `mode` ('loglik' or 'cot') with `prompt_style` ('chat' or, loglik only, 'lm_eval')."""
    if mode == "loglik":
        return score_loglik(backend, items, on_progress, prompt_style=prompt_style)
    if prompt_style != "chat":
        raise ValueError(f"prompt style {prompt_style!r} scores loglik only")
    if mode == "cot":
        return score_cot(backend, items, max_new_tokens, on_progress)
    raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
