"""The merge stage: fold the LoRA adapter into a full-precision base, then prove nothing changed.

Merging into a quantized base (the usual cause of "the merged model is worse than the adapter") is
impossible here: the base is always loaded in fp32 by `medtune.modeling.load_base_model`. The
saved folder is reloaded from disk and its logits are compared with base + adapter on validation
prompts (`medtune.verify`); in fp32 every next-token prediction must agree and logits may differ by
at most `merge.max_abs_diff`. A bf16/fp16 merged copy (GPU default) must agree on >= 99% of
positions, since rounding the weights to 16 bits legitimately moves near-ties.

Merging is idempotent: merged/ records a digest of its inputs (the adapter's files, the model and
merge sections), and a merge whose inputs are unchanged returns the recorded result with the note
"already merged" instead of merging again.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medtune.artifacts import atomic_dir, atomic_write_json, fingerprint, sha256_file
from medtune.config import RunConfig
from medtune.errors import ArtifactError, ModelError
from medtune.llamacpp import default_threads
from medtune.modeling import load_base_model, merged_adapter
from medtune.rundir import RunDir
from medtune.tokenizer import end_of_turn_token
from medtune.verify import compare_logits, hf_logits, save_reference_top1, torch_threads, verification_prompts

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
VERIFICATION_FILE = "merge_verification.json"  # in merged/: the MergeResult and the inputs digest
LOW_PRECISION_MIN_TOP1 = 0.99
ALREADY_MERGED = "already merged: the adapter and the model/merge settings are unchanged since merged/ was written"


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


@dataclass
class AdapterTokenizer:
    """The adapter's tokenizer, with EOS made the end-of-turn token."""

    tokenizer: Any
    end_of_turn: str
    original_eos_id: int | None
    notes: list[str]


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


def check_agreement(dtype_name: str, max_diff: float, top1: float, tolerance: float) -> None:
    """Raise ArtifactError unless the merged model agrees with base + adapter well enough for its dtype."""
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


def merge_inputs_digest(config: RunConfig, run: RunDir) -> str:
    """A digest of everything the merged folder is made from: the adapter folder's files and the
    model and merge sections of the config."""
    files = {p.name: sha256_file(p) for p in sorted(merged_adapter(config, run).iterdir()) if p.is_file()}
    return fingerprint({"adapter": files, "model": config.section_dump("model"), "merge": config.section_dump("merge")})


def merge_adapter(config: RunConfig, run: RunDir) -> MergeResult:
    """Merge the run's adapter into the full-precision base and save the run's merged/ folder.

    Verifies the reloaded merged folder against base + adapter on validation prompts. Returns the
    recorded result (note: already merged) when merged/ was made from the same inputs. Raises
    ArtifactError (no adapter, verification failed; the previous merged/ is then kept) or
    ModelError (base/adapter do not load or do not fit each other).
    """
    started = time.perf_counter()
    adapter = merged_adapter(config, run)
    check_adapter(adapter)
    digest = merge_inputs_digest(config, run)
    previous = _already_merged(run, digest)
    if previous is not None:
        return previous
    device, dtype_name = _device_and_dtype(config.merge.dtype)
    adapter_tokenizer = _load_adapter_tokenizer(adapter)
    adapted = _load_adapted(config, adapter, adapter_tokenizer.tokenizer, device)
    prompts, prompt_source = verification_prompts(run, adapter_tokenizer.tokenizer, config.merge.verify_prompts)
    threads = _threads(device)
    with torch_threads(threads):
        reference = hf_logits(adapted, prompts)
    merged = _merge_and_mark_eos(adapted, adapter_tokenizer)
    del adapted
    eos_ids = list(merged.generation_config.eos_token_id)
    with atomic_dir(run.merged) as tmp:
        _save_merged(merged, adapter_tokenizer.tokenizer, dtype_name, tmp)
        del merged
        max_diff, top1, positions = _reload_and_compare(tmp, device, prompts, reference, threads)
        del reference
        check_agreement(dtype_name, max_diff, top1, config.merge.max_abs_diff)
        result = MergeResult(
            merged_dir=run.merged, dtype=dtype_name, device=device, prompts=len(prompts), positions=positions,
            max_abs_diff=round(max_diff, 8), top1_agreement=top1, end_of_turn=adapter_tokenizer.end_of_turn,
            eos_token_ids=eos_ids, prompt_source=prompt_source, seconds=0.0, notes=adapter_tokenizer.notes,
        )
        atomic_write_json(tmp / VERIFICATION_FILE, {**result.figures(), "inputs_digest": digest})
    result.seconds = round(time.perf_counter() - started, 2)
    return result


# ---- steps --------------------------------------------------------------------------------------


def _already_merged(run: RunDir, digest: str) -> MergeResult | None:
    """The recorded result when merged/ is complete and was made from inputs with this digest."""
    recorded = run.merged / VERIFICATION_FILE
    if not recorded.is_file() or not (run.merged / "config.json").is_file() or not any(run.merged.glob("*.safetensors")):
        return None
    try:
        saved = json.loads(recorded.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if saved.pop("inputs_digest", None) != digest:
        return None
    saved["merged_dir"] = Path(saved["merged_dir"])
    saved["notes"] = [*saved.get("notes", []), ALREADY_MERGED]
    saved["seconds"] = 0.0
    return MergeResult(**saved)


def _device_and_dtype(choice: str) -> tuple[str, str]:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "auto":
        return device, ("bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "fp32")
    return device, choice


def _threads(device: str) -> int:
    import torch

    return torch.get_num_threads() if device == "cuda" else default_threads()


def _load_adapter_tokenizer(source: Path) -> AdapterTokenizer:
    """The adapter's tokenizer; EOS becomes the end-of-turn token (llama.cpp, Ollama and most chat
    front ends stop on EOS only)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source))
    if not tokenizer.chat_template:
        raise ArtifactError(f"{source}: the saved tokenizer has no chat template; rerun `medtune train`")
    end_of_turn = end_of_turn_token(tokenizer)
    original_eos = tokenizer.eos_token_id
    notes = []
    if tokenizer.eos_token != end_of_turn:
        notes.append(f"EOS token set to the end-of-turn token {end_of_turn!r} (was {tokenizer.eos_token!r})")
        tokenizer.eos_token = end_of_turn
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        raise ArtifactError(f"{source}: pad token is {tokenizer.pad_token!r} (missing or EOS); rerun `medtune train`")
    return AdapterTokenizer(tokenizer, end_of_turn, original_eos, notes)


def _load_adapted(config: RunConfig, source: Path, tokenizer, device: str):
    """base (fp32) + adapter as a PEFT model in eval mode."""
    import torch
    from peft import PeftModel

    base = load_base_model(config.model, dtype=torch.float32, device=device)
    embedded = base.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > embedded:
        raise ModelError(
            f"{source}: the tokenizer has {len(tokenizer)} tokens but the base embeds only {embedded}; "
            f"was the adapter trained on another base than {config.model.base}?"
        )
    try:
        adapted = PeftModel.from_pretrained(base, str(source))
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        raise ModelError(f"{source}: the adapter does not fit the base {config.model.base}: {exc}") from exc
    return adapted.eval()


def _merge_and_mark_eos(adapted, adapter_tokenizer: AdapterTokenizer):
    """The merged model, its generation config stopping on the end-of-turn token."""
    tokenizer = adapter_tokenizer.tokenizer
    merged = adapted.merge_and_unload()
    if hasattr(merged.config, "quantization_config"):
        delattr(merged.config, "quantization_config")  # llama.cpp's converter rejects it
    generation = merged.generation_config
    generation.eos_token_id = generation_eos_ids(
        tokenizer, adapter_tokenizer.end_of_turn, [adapter_tokenizer.original_eos_id, generation.eos_token_id])
    generation.pad_token_id = tokenizer.pad_token_id
    if tokenizer.bos_token_id is not None:
        generation.bos_token_id = tokenizer.bos_token_id
    merged.config.pad_token_id = tokenizer.pad_token_id
    return merged


def _save_merged(merged, tokenizer, dtype_name: str, folder: Path) -> None:
    import torch

    save_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    merged.to(save_dtype).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _reload_and_compare(folder: Path, device: str, prompts: list[list[int]], reference: list[Any],
                        threads: int) -> tuple[float, float, int]:
    """Reload the saved merged model (verify what is on disk, not what is in memory) and compare its
    logits with base + adapter: (max |diff|, top-1 agreement, positions). Also records its top-1
    tokens, which export compares the 16-bit GGUF against."""
    import torch
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).to(device).eval()
    if getattr(reloaded.config, "quantization_config", None) is not None:
        raise ArtifactError("the saved merged config still carries quantization_config")
    with torch_threads(threads):
        candidate = hf_logits(reloaded, prompts)
    del reloaded
    save_reference_top1(folder, prompts, candidate)
    return compare_logits(reference, candidate)
