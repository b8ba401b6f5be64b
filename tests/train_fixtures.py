"""Helpers for the training tests: tiny prepared datasets in the prepare stage's on-disk format."""

from __future__ import annotations

import json
import random
from pathlib import Path

IGNORE = -100

_QUESTIONS = [
    ("What is the first-line treatment of anaphylaxis?", "Intramuscular adrenaline."),
    ("Which vitamin deficiency causes scurvy?", "Vitamin C deficiency."),
    ("What does a positive Kernig sign suggest?", "Meningeal irritation, as in meningitis."),
    ("Name the most common cause of community-acquired pneumonia.", "Streptococcus pneumoniae."),
    ("Which electrolyte disturbance causes peaked T waves?", "Hyperkalaemia."),
    ("What is the antidote for paracetamol overdose?", "N-acetylcysteine."),
    ("Which organism causes tuberculosis?", "Mycobacterium tuberculosis."),
    ("What is the normal adult resting heart rate?", "Sixty to one hundred beats per minute."),
]


def tokenize_chat(tokenizer, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """input_ids of the rendered chat and labels that keep only assistant tokens (incl. end of turn)."""
    ids: list[int] = []
    labels: list[int] = []
    rendered_so_far = ""
    for index in range(len(messages)):
        text = tokenizer.apply_chat_template(messages[: index + 1], tokenize=False)
        piece = text[len(rendered_so_far) :]
        rendered_so_far = text
        if messages[index]["role"] == "assistant":
            # the header "<|im_start|>assistant\n" is prompt; the reply and its end-of-turn are trained
            header = tokenizer.apply_chat_template(messages[:index], tokenize=False, add_generation_prompt=True)
            head = header[len(text) - len(piece) :]
            head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
            body_ids = tokenizer(piece[len(head) :].rstrip("\n"), add_special_tokens=False)["input_ids"]
            tail_ids = tokenizer(piece[len(head) :][len(piece[len(head) :].rstrip("\n")) :], add_special_tokens=False)["input_ids"]
            ids += head_ids + body_ids + tail_ids
            labels += [IGNORE] * len(head_ids) + body_ids + [IGNORE] * len(tail_ids)
        else:
            piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
            ids += piece_ids
            labels += [IGNORE] * len(piece_ids)
    return ids, labels


def make_examples(tokenizer, count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        q, a = _QUESTIONS[i % len(_QUESTIONS)]
        messages = [{"role": "user", "content": q}, {"role": "assistant", "content": a + " " * 0}]
        if rng.random() < 0.5:
            messages[1]["content"] = a + " This is the standard answer."
        ids, labels = tokenize_chat(tokenizer, messages)
        rows.append({"input_ids": ids, "labels": labels, "length": len(ids), "messages": json.dumps(messages)})
    return rows


def write_prepared(run_dir: Path, tokenizer, n_train: int = 24, n_val: int = 8) -> Path:
    """Save train/val splits like `medtune prepare` does (DatasetDict + report.json) under run_dir/data."""
    from datasets import Dataset, DatasetDict

    data_dir = Path(run_dir) / "data"
    splits = DatasetDict(
        {
            "train": Dataset.from_list(make_examples(tokenizer, n_train, seed=1)),
            "val": Dataset.from_list(make_examples(tokenizer, n_val, seed=2)),
        }
    )
    splits.save_to_disk(str(data_dir))
    (data_dir / "report.json").write_text(json.dumps({"kept": n_train + n_val}))
    return data_dir


def poison_gradient_at(step: int):
    """A Trainer callback that turns one gradient entry into nan just before optimizer step `step`: what a
    diverged update looks like to the optimizer. Registered before medtune's NonFiniteGradientGuard (extra
    callbacks come first), so the guard sees it."""
    from transformers import TrainerCallback

    class PoisonGradient(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            if state.global_step + 1 == step:
                next(p for p in model.parameters() if p.grad is not None).grad.view(-1)[0] = float("nan")

    return PoisonGradient()
