"""Logit agreement: does a model file still predict what the model it was made from predicts?

Merge compares the saved merged folder with base + adapter, export compares the 16-bit GGUF with
the merged model and every quant with the 16-bit GGUF, the adapter GGUF on its base is compared
with the merged 16-bit GGUF, and the benchmarks measure quant types the same way. All of them use
these tools, on the same prompts:

- `verification_texts` / `verification_prompts`: chat prompts from the run's val split (each
  conversation up to its last assistant turn, rendered with the chat template), or a few fixed
  medical questions when the run has none;
- `hf_logits` (transformers) and `gguf_logprobs` (the llama.cpp runtime): next-token scores at every
  prompt position;
- `compare_logits` (max |difference| and top-1 agreement of two logit lists), `top1_agreement`,
  `top1_tokens` and `mean_kl` (KL divergence in nats per position).

The merged folder also keeps the merged model's top-1 tokens on its prompts (`save_reference_top1`),
so export compares the 16-bit GGUF against them without running the merged model again.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtune import llamacpp
from medtune.artifacts import atomic_write_json
from medtune.data.prepare import chat_messages, read_split
from medtune.errors import ArtifactError
from medtune.rundir import RunDir

MAX_PROMPT_TOKENS = 384
# The seed project's own test question: the fallback prompts start with it, and export asks every
# GGUF file to answer it.
SEED_TEST_QUESTION = (
    "A patient presents with severe headache and neck stiffness. What is the most likely diagnosis? "
    "A. Migraine B. Meningitis C. Tension headache D. Sinusitis"
)
# Used when the run has no validation split (e.g. an adapter trained elsewhere).
FALLBACK_PROMPTS = (
    SEED_TEST_QUESTION,
    "A 60-year-old man has crushing chest pain radiating to the left arm and sweating. What is the first test to order?",
    "Which vitamin deficiency causes scurvy, and what are its typical signs?",
    "A child has a barking cough and inspiratory stridor. What is the most likely diagnosis?",
)
# In the merged folder: the prompts (token ids) and the merged model's top-1 token at each position.
REFERENCE_TOP1_FILE = "reference_top1.json"


# ---- prompts ------------------------------------------------------------------------------------


def verification_texts(run: RunDir, tokenizer, limit: int) -> tuple[list[list[dict[str, str]]], list[str], str]:
    """Up to `limit` chat prompts as (conversations, rendered texts, source description).

    Prompts come from the run's val split (column `messages`): each conversation up to its last
    assistant turn, rendered with the tokenizer's chat template plus the generation prompt. Falls
    back to FALLBACK_PROMPTS when the run has no val split. Raises ArtifactError when the split
    exists but cannot be read.
    """
    conversations = validation_conversations(run.split("val"), limit)
    source = "validation split"
    if not conversations:
        conversations = [[{"role": "user", "content": text}] for text in FALLBACK_PROMPTS[:limit]]
        source = "built-in prompts (no validation split in the run)"
    texts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in conversations]
    return conversations, texts, source


def verification_prompts(run: RunDir, tokenizer, limit: int) -> tuple[list[list[int]], str]:
    """Token ids (at most MAX_PROMPT_TOKENS each) of the verification prompts, and their source.
    Raises ArtifactError when no prompt has two tokens."""
    _, texts, source = verification_texts(run, tokenizer, limit)
    prompts = [ids for ids in (encode_prompt(tokenizer, text) for text in texts) if len(ids) >= 2]
    if not prompts:
        raise ArtifactError(f"no usable verification prompts in {run.split('val')}")
    return prompts, source


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Ids of a rendered chat prompt: the template already wrote any BOS, so add no special tokens."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"][:MAX_PROMPT_TOKENS])


def validation_conversations(val_dir: Path, limit: int) -> list[list[dict[str, str]]]:
    """The first `limit` conversations of a prepared split, each cut before its last assistant turn
    ([] when the split does not exist)."""
    if not val_dir.is_dir():
        return []
    dataset = read_split(val_dir)
    conversations = []
    for raw in dataset.select(range(min(limit, len(dataset))))["messages"]:
        messages = chat_messages(raw)
        last_assistant = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
        prompt = [{"role": m["role"], "content": m["content"]} for m in messages[:last_assistant]]
        if prompt:
            conversations.append(prompt)
    return conversations


# ---- scores -------------------------------------------------------------------------------------


def hf_logits(model, prompts: list[list[int]]) -> list[Any]:
    """fp32 CPU logits [len, vocab] (torch tensors) of a transformers model for each prompt (one at a
    time: no padding effects)."""
    import torch  # heavy; callers that only read GGUF files never need it

    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for ids in prompts:
            logits = model(input_ids=torch.tensor([ids], device=device)).logits[0]
            out.append(logits.float().cpu())
    return out


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run torch CPU ops with `count` threads, then restore (see llamacpp.default_threads for why
    fewer threads are faster on a busy machine)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, count))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def gguf_logprobs(path: Path, prompts: list[list[int]], threads: int, *, lora_path: Path | None = None) -> list[np.ndarray]:
    """Log-softmax of a GGUF file's next-token logits for each prompt (float32, [len, vocab]).

    lora_path: a GGUF LoRA adapter llama.cpp applies on load. Raises ToolError when the runtime is
    missing or the file does not load."""
    llm = llamacpp.open_gguf(path, n_ctx=max(len(p) for p in prompts) + 8, logits_all=True, n_threads=threads,
                             lora_path=lora_path)
    try:
        return [log_softmax(llamacpp.sequence_logits(llm, ids)) for ids in prompts]
    finally:
        llm.close()


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def top1_tokens(scores: Sequence[Any]) -> list[np.ndarray]:
    """The most likely next token at every position of each [len, vocab] array."""
    return [np.asarray(s.argmax(-1)) for s in scores]


def top1_agreement(reference: Sequence[Any], candidate: Sequence[Any]) -> float:
    """Share of positions whose top-1 tokens (as from `top1_tokens`) are the same."""
    agree = sum(int((np.asarray(r) == np.asarray(c)).sum()) for r, c in zip(reference, candidate, strict=True))
    return agree / max(sum(len(r) for r in reference), 1)


def mean_kl(p_logprobs: Sequence[np.ndarray], q_logprobs: Sequence[np.ndarray]) -> float:
    """Mean over positions of KL(P || Q) in nats (log-probabilities as from `gguf_logprobs`)."""
    total, count = 0.0, 0
    for p, q in zip(p_logprobs, q_logprobs, strict=True):
        total += float((np.exp(p) * (p - q)).sum())
        count += p.shape[0]
    return total / max(count, 1)


def compare_logits(reference: list[Any], candidate: list[Any]) -> tuple[float, float, int]:
    """(max abs difference, top-1 agreement, positions) between two lists of [len, vocab] tensors."""
    diff, agree, total = 0.0, 0, 0
    for ref, cand in zip(reference, candidate, strict=True):
        diff = max(diff, float((ref - cand).abs().max()))
        agree += int((ref.argmax(-1) == cand.argmax(-1)).sum())
        total += ref.shape[0]
    return diff, agree / max(total, 1), total


# ---- the merged model's recorded predictions ----------------------------------------------------


def save_reference_top1(folder: Path, prompts: list[list[int]], logits: list[Any]) -> None:
    """Record a model's top-1 token at every prompt position in `folder` (the merged folder)."""
    atomic_write_json(folder / REFERENCE_TOP1_FILE, {"prompts": prompts, "top1": [x.argmax(-1).tolist() for x in logits]})


def recorded_reference_top1(folder: Path, prompts: list[list[int]]) -> list[np.ndarray] | None:
    """The top-1 tokens `save_reference_top1` recorded in `folder` for exactly these prompts, else None."""
    recorded = folder / REFERENCE_TOP1_FILE
    if not recorded.is_file():
        return None
    saved = json.loads(recorded.read_text(encoding="utf-8"))
    if saved.get("prompts") != prompts:
        return None
    return [np.asarray(top1) for top1 in saved["top1"]]


def hf_top1(model_dir: Path, prompts: list[list[int]], threads: int) -> list[np.ndarray]:
    """A saved transformers model's top-1 token at every prompt position: the recorded ones when the
    folder has them for these prompts, else computed (fp32, CPU)."""
    recorded = recorded_reference_top1(model_dir, prompts)
    if recorded is not None:
        return recorded
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch_threads(threads):
        top1 = [logits.argmax(-1).numpy() for logits in hf_logits(model, prompts)]
    del model
    return top1
