"""The merge stage: fold the LoRA adapter into a full-precision base, then prove nothing changed.

Merging into a quantized base (the usual cause of "the merged model is worse than the adapter") is
impossible here: the base is always loaded in fp32 by `medtune.modeling.load_base_model`. The
saved folder is reloaded from disk and its logits are compared with base + adapter on validation
prompts; in fp32 every next-token prediction must agree and logits may differ by at most
`merge.max_abs_diff`. A bf16/fp16 merged copy (GPU default) must agree on >= 99% of positions,
since rounding the weights to 16 bits legitimately moves near-ties.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medtune.artifacts import atomic_dir, atomic_write_json
from medtune.config import RunConfig
from medtune.errors import ArtifactError, ModelError

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
REFERENCE_FILE = "reference_top1.json"  # prompts (token ids) and the merged model's top-1 at each position
MAX_PROMPT_TOKENS = 384
LOW_PRECISION_MIN_TOP1 = 0.99

# Used when the run has no validation split (e.g. an adapter trained elsewhere).
FALLBACK_PROMPTS = (
    "A patient presents with severe headache and neck stiffness. What is the most likely diagnosis? "
    "A. Migraine B. Meningitis C. Tension headache D. Sinusitis",
    "A 60-year-old man has crushing chest pain radiating to the left arm and sweating. What is the first test to order?",
    "Which vitamin deficiency causes scurvy, and what are its typical signs?",
    "A child has a barking cough and inspiratory stridor. What is the most likely diagnosis?",
)


@dataclass
class MergeResult:
    """What the merge stage made and how well the merged model matches base + adapter."""

    merged_dir: Path
    dtype: str
    device: str
    prompts: int
    positions: int
    max_abs_diff: float
    top1_agreement: float
    end_of_turn: str
    eos_token_ids: list[int]
    prompt_source: str
    seconds: float
    notes: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        out = asdict(self)
        out["merged_dir"] = str(self.merged_dir)
        return out


def adapter_dir(config: RunConfig) -> Path:
    return config.run_dir / "adapter"


def merged_dir(config: RunConfig) -> Path:
    return config.run_dir / "merged"


def check_adapter(folder: Path) -> None:
    """Raise ArtifactError unless `folder` holds a complete PEFT adapter with its tokenizer."""
    missing = [name for name in ADAPTER_FILES if not (folder / name).is_file()]
    if not folder.is_dir() or missing:
        raise ArtifactError(
            f"no trained adapter in {folder} (missing {', '.join(missing) or 'the folder'}); "
            "run `medtune train CONFIG` first"
        )
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise ArtifactError(f"{folder} has no tokenizer files; the train stage saves them next to the adapter: rerun it")


def verification_texts(run_dir: Path, tokenizer, limit: int) -> tuple[list[list[dict[str, str]]], list[str], str]:
    """Up to `limit` chat prompts as (conversations, rendered texts, source description).

    Prompts come from the run's validation split (runs/<name>/data/val, column `messages`): each
    conversation up to its last assistant turn, rendered with the tokenizer's chat template plus the
    generation prompt. Falls back to a few fixed medical questions when the run has no validation data.
    """
    conversations = _validation_conversations(Path(run_dir) / "data" / "val", limit)
    source = "validation split"
    if not conversations:
        conversations = [[{"role": "user", "content": text}] for text in FALLBACK_PROMPTS[:limit]]
        source = "built-in prompts (no validation split in the run)"
    texts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in conversations]
    return conversations, texts, source


def verification_prompts(run_dir: Path, tokenizer, limit: int) -> tuple[list[list[int]], str]:
    """Token ids (at most MAX_PROMPT_TOKENS each) of the verification prompts, and their source."""
    _, texts, source = verification_texts(run_dir, tokenizer, limit)
    prompts = [ids for ids in (encode_prompt(tokenizer, text) for text in texts) if len(ids) >= 2]
    if not prompts:
        raise ArtifactError(f"no usable verification prompts in {run_dir}/data/val")
    return prompts, source


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Ids of a rendered chat prompt: the template already wrote any BOS, so add no special tokens."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"][:MAX_PROMPT_TOKENS])


def _validation_conversations(val_dir: Path, limit: int) -> list[list[dict[str, str]]]:
    if not val_dir.is_dir():
        return []
    from datasets import load_from_disk

    try:
        dataset = load_from_disk(str(val_dir))
    except (OSError, ValueError, FileNotFoundError) as exc:
        raise ArtifactError(f"{val_dir}: cannot read the validation split ({exc}); rerun `medtune prepare`") from exc
    if "messages" not in dataset.column_names:
        raise ArtifactError(f"{val_dir}: no 'messages' column (has {dataset.column_names}); rerun `medtune prepare`")
    conversations = []
    for raw in dataset.select(range(min(limit, len(dataset))))["messages"]:
        messages = json.loads(raw) if isinstance(raw, str) else list(raw)
        last_assistant = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
        prompt = [{"role": m["role"], "content": m["content"]} for m in messages[:last_assistant]]
        if prompt:
            conversations.append(prompt)
    return conversations


def prompt_logits(model, prompts: list[list[int]]) -> list[Any]:
    """fp32 CPU logits [len, vocab] of `model` for each prompt (one at a time: no padding effects)."""
    import torch

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


def compare_logits(reference: list[Any], candidate: list[Any]) -> tuple[float, float, int]:
    """(max abs difference, top-1 agreement, positions) between two lists of [len, vocab] tensors."""
    diff, agree, total = 0.0, 0, 0
    for ref, cand in zip(reference, candidate, strict=True):
        diff = max(diff, float((ref - cand).abs().max()))
        agree += int((ref.argmax(-1) == cand.argmax(-1)).sum())
        total += ref.shape[0]
    return diff, agree / max(total, 1), total


def generation_eos_ids(tokenizer, end_of_turn: str, existing: Any) -> list[int]:
    """EOS ids for generation_config: the end-of-turn token first, then EOS and any already set."""
    ids = [tokenizer.convert_tokens_to_ids(end_of_turn)]
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    if isinstance(existing, int):
        ids.append(existing)
    elif isinstance(existing, (list, tuple)):
        for item in existing:
            ids.extend(item if isinstance(item, (list, tuple)) else [item])
    return list(dict.fromkeys(int(i) for i in ids if i is not None and int(i) >= 0))


def _device_and_dtype(choice: str) -> tuple[str, str]:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "auto":
        return device, ("bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "fp32")
    return device, choice


def merge_adapter(config: RunConfig) -> MergeResult:
    """Merge runs/<name>/adapter into the full-precision base and save runs/<name>/merged/.

    Verifies the reloaded merged folder against base + adapter on validation prompts and records
    the figures in the run manifest. Raises ArtifactError (no adapter, verification failed) or
    ModelError (base/adapter do not load or do not fit each other).
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medtune.llamacpp import default_threads
    from medtune.modeling import load_base_model
    from medtune.tokenizer import end_of_turn_token

    started = time.perf_counter()
    run_dir, source = config.run_dir, adapter_dir(config)
    check_adapter(source)
    device, dtype_name = _device_and_dtype(config.merge.dtype)
    save_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    notes: list[str] = []

    tokenizer = AutoTokenizer.from_pretrained(str(source))
    if not tokenizer.chat_template:
        raise ArtifactError(f"{source}: the saved tokenizer has no chat template; rerun `medtune train`")
    end_of_turn = end_of_turn_token(tokenizer)
    original_eos = tokenizer.eos_token_id
    if tokenizer.eos_token != end_of_turn:
        # llama.cpp, Ollama and most chat front ends stop on EOS only: make it the end-of-turn token.
        notes.append(f"EOS token set to the end-of-turn token {end_of_turn!r} (was {tokenizer.eos_token!r})")
        tokenizer.eos_token = end_of_turn
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        raise ArtifactError(f"{source}: pad token is {tokenizer.pad_token!r} (missing or EOS); rerun `medtune train`")

    base = load_base_model(config.model, dtype=torch.float32, device=device)
    if len(tokenizer) > base.get_input_embeddings().weight.shape[0]:
        raise ModelError(
            f"{source}: the tokenizer has {len(tokenizer)} tokens but the base embeds only "
            f"{base.get_input_embeddings().weight.shape[0]}; was the adapter trained on another base than {config.model.base}?"
        )
    try:
        adapted = PeftModel.from_pretrained(base, str(source))
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        raise ModelError(f"{source}: the adapter does not fit the base {config.model.base}: {exc}") from exc
    adapted.eval()

    prompts, prompt_source = verification_prompts(run_dir, tokenizer, config.merge.verify_prompts)
    threads = torch.get_num_threads() if device == "cuda" else default_threads()
    with torch_threads(threads):
        reference = prompt_logits(adapted, prompts)
    merged = adapted.merge_and_unload()
    del adapted
    if hasattr(merged.config, "quantization_config"):
        delattr(merged.config, "quantization_config")  # llama.cpp's converter rejects it
    generation = merged.generation_config
    generation.eos_token_id = generation_eos_ids(tokenizer, end_of_turn, [original_eos, generation.eos_token_id])
    generation.pad_token_id = tokenizer.pad_token_id
    if tokenizer.bos_token_id is not None:
        generation.bos_token_id = tokenizer.bos_token_id
    merged.config.pad_token_id = tokenizer.pad_token_id

    with atomic_dir(merged_dir(config)) as tmp:
        merged.to(save_dtype).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        del merged
        # Verify what is on disk, not what is in memory.
        reloaded = AutoModelForCausalLM.from_pretrained(str(tmp), dtype=torch.float32).to(device).eval()
        if getattr(reloaded.config, "quantization_config", None) is not None:
            raise ArtifactError("the saved merged config still carries quantization_config")
        with torch_threads(threads):
            candidate = prompt_logits(reloaded, prompts)
        max_diff, top1, positions = compare_logits(reference, candidate)
        # The saved model's next-token predictions: export compares the GGUF against these
        # instead of running the merged model again.
        atomic_write_json(
            tmp / REFERENCE_FILE,
            {"prompts": prompts, "top1": [logits.argmax(-1).tolist() for logits in candidate]},
        )
        del candidate
        del reloaded, reference
        _check_agreement(dtype_name, max_diff, top1, config.merge.max_abs_diff)
        result = MergeResult(
            merged_dir=merged_dir(config),
            dtype=dtype_name,
            device=device,
            prompts=len(prompts),
            positions=positions,
            max_abs_diff=round(max_diff, 8),
            top1_agreement=top1,
            end_of_turn=end_of_turn,
            eos_token_ids=list(generation.eos_token_id),
            prompt_source=prompt_source,
            seconds=0.0,
            notes=notes,
        )
        atomic_write_json(tmp / "merge_verification.json", result.figures())
    result.seconds = round(time.perf_counter() - started, 2)
    _record(config, result)
    return result


def _check_agreement(dtype_name: str, max_diff: float, top1: float, tolerance: float) -> None:
    if dtype_name == "fp32":
        if top1 < 1.0 or max_diff > tolerance:
            raise ArtifactError(
                f"merged model differs from base + adapter: top-1 agreement {top1:.2%} (need 100%), "
                f"max |logit diff| {max_diff:.3g} (allowed {tolerance:g}, merge.max_abs_diff); "
                "the previous merged/ folder was kept"
            )
    elif top1 < LOW_PRECISION_MIN_TOP1:
        raise ArtifactError(
            f"merged {dtype_name} model agrees with base + adapter on only {top1:.2%} of next tokens "
            f"(need {LOW_PRECISION_MIN_TOP1:.0%}); try merge.dtype=fp32"
        )


def _record(config: RunConfig, result: MergeResult) -> None:
    from medtune.pipeline import record_stage_result

    record_stage_result(config, "merge", result.figures())
