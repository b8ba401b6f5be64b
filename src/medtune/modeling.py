"""Loading the base model as a clean, full-precision Hugging Face model.

Sources (see `medtune.tokenizer.resolve_model_source`): a hub id, a local Hugging Face folder, a
.gguf file, or the embedded SmolLM2 GGUF. transformers dequantizes a GGUF on load but leaves the
model marked as quantized (`quantization_config`, an `hf_quantizer`): such a model refuses
`save_pretrained`, and the marker later breaks llama.cpp's converter. So a GGUF-loaded model is
rebuilt from its config (without the marker) and its dequantized state dict.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch

from medtune.config import ModelConfig
from medtune.errors import ModelError
from medtune.tokenizer import resolve_model_source

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def load_base_model(
    model: ModelConfig,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """Load `model.base` as a causal LM in `dtype` on `device`, free of any quantization marker.

    attn_implementation: a transformers attention name ("sdpa", "eager", "flash_attention_2", or one
    registered through `transformers.AttentionInterface`); None lets transformers choose.
    Raises ModelError when the source is missing, unreadable, or not a causal language model.
    """
    from transformers import AutoModelForCausalLM

    source = resolve_model_source(model.base)
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "trust_remote_code": model.trust_remote_code,
        **source.load_kwargs(),
    }
    if model.revision:
        kwargs["revision"] = model.revision
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        loaded = AutoModelForCausalLM.from_pretrained(source.path, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"model.base: cannot load {model.base} as a causal language model: {exc}") from exc
    if _is_quantization_marked(loaded):
        loaded = _rebuild_unquantized(loaded, dtype=dtype, attn_implementation=attn_implementation)
    loaded.to(device)
    return loaded


def _is_quantization_marked(model: PreTrainedModel) -> bool:
    return getattr(model, "hf_quantizer", None) is not None or getattr(model.config, "quantization_config", None) is not None


def _rebuild_unquantized(model: PreTrainedModel, *, dtype: torch.dtype, attn_implementation: str | None) -> PreTrainedModel:
    """A fresh model of the same architecture without quantization_config, holding the same weights."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    state = model.state_dict()
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    # Build on the meta device: no time spent initialising weights that are overwritten next.
    with torch.device("meta"):
        clean = AutoModelForCausalLM.from_config(config, **kwargs)
    missing, unexpected = clean.load_state_dict(state, strict=False, assign=True)
    # Tied output embeddings are not separate entries of the state dict.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelError(
            f"model.base: the GGUF's dequantized weights do not match its architecture "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    if config.tie_word_embeddings:
        clean.tie_weights()
    _materialize_buffers(clean, model)
    clean.generation_config = copy.deepcopy(model.generation_config)
    del model
    return clean.to(dtype)


def _materialize_buffers(clean: PreTrainedModel, original: PreTrainedModel) -> None:
    """Non-persistent buffers (rotary inverse frequencies) are not in the state dict: copy them over."""
    originals = dict(original.named_buffers())
    for name, buffer in list(clean.named_buffers()):
        if buffer.device.type != "meta":
            continue
        if name not in originals:
            raise ModelError(f"model.base: cannot rebuild buffer {name} of the GGUF model")
        module_name, _, attr = name.rpartition(".")
        module = clean.get_submodule(module_name) if module_name else clean
        persistent = attr not in getattr(module, "_non_persistent_buffers_set", set())
        module.register_buffer(attr, originals[name].clone(), persistent=persistent)
    for name, param in clean.named_parameters():
        if param.device.type == "meta":
            raise ModelError(f"model.base: parameter {name} has no weights after rebuilding the GGUF model")
