"""The seed project's smoke test: one multiple-choice question answered greedily by the model.

The untrained SmolLM2-135M-Instruct answers "D. Sinusitis"; the expected answer is B.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from medtune.tokenizer import end_of_turn_token

QUESTION = "A patient presents with severe headache and neck stiffness. What is the most likely diagnosis?"
OPTIONS = {"A": "Migraine", "B": "Meningitis", "C": "Tension headache", "D": "Sinusitis"}
EXPECTED = "B"


def test_question_prompt() -> str:
    """The question with its lettered options, one per line."""
    return QUESTION + "\n" + "\n".join(f"{letter}. {text}" for letter, text in OPTIONS.items())


def extract_choice(text: str) -> str | None:
    """The option a free-text answer commits to, or None.

    In order: an explicit "answer is X"; an answer that opens with an option ("B. Meningitis",
    "Meningitis"); "diagnosis is <option>"; else the last option letter or name mentioned.
    """
    explicit = re.findall(r"answer(?:\s+is)?\s*[:\-]?\s*\(?([ABCD])\b", text, flags=re.IGNORECASE)
    if explicit:
        return explicit[-1].upper()
    head = text.strip()
    for letter, name in OPTIONS.items():
        if re.match(rf"\(?{letter}[.):]", head) or head.lower().startswith(name.lower()):
            return letter
    stated = re.search(r"diagnosis is\s+(?:likely\s+)?([A-Za-z ]+)", text, flags=re.IGNORECASE)
    if stated:
        for letter, name in OPTIONS.items():
            if stated.group(1).lower().startswith(name.lower()):
                return letter
    hits: list[tuple[int, str]] = []
    for letter, name in OPTIONS.items():
        for match in re.finditer(rf"(?<![A-Za-z]){letter}[.)]|{re.escape(name)}", text, flags=re.IGNORECASE):
            hits.append((match.start(), letter))
    return max(hits)[1] if hits else None


@torch.no_grad()
def answer_test_question(model, tokenizer, *, system_prompt: str | None = None, max_new_tokens: int = 256) -> dict[str, Any]:
    """Greedy answer of `model` (a causal LM or PEFT model, put in eval mode) to the test question.

    Returns {question, prompt, answer, choice, expected, correct, new_tokens}.
    """
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": test_question_prompt()}
    ]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    device = next(model.parameters()).device
    encoded = {k: v.to(device) for k, v in encoded.items()}
    was_training = model.training
    model.eval()
    try:
        output = model.generate(
            **encoded,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=_stop_ids(tokenizer),
        )
    finally:
        model.train(was_training)
    new = output[0, encoded["input_ids"].shape[1] :]
    answer = tokenizer.decode(new, skip_special_tokens=True).strip()
    choice = extract_choice(answer)
    return {
        "question": test_question_prompt(),
        "prompt": prompt,
        "answer": answer,
        "choice": choice,
        "expected": EXPECTED,
        "correct": choice == EXPECTED,
        "new_tokens": int(new.numel()),
    }


def _stop_ids(tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    try:
        ids.add(tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer)))
    except Exception:  # a template without a special end-of-turn token still stops at EOS
        pass
    return sorted(i for i in ids if i is not None)
