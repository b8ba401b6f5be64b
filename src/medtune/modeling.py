"""Loading the base model as a clean, full-precision Hugging Face model.

Sources (see `medtune.tokenizer.resolve_model_source`): a hub id, a local Hugging Face folder, a
.gguf file, or the embedded SmolLM2 GGUF. transformers dequantizes a GGUF on load but leaves the
model marked as quantized (`quantization_config`, an `hf_quantizer`): such a model refuses
`save_pretrained`, and the marker later breaks llama.cpp's converter. So a GGUF-loaded model is
rebuilt from its config (without the marker) and its dequantized state dict.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from medtune.config import ModelConfig, RunConfig
from medtune.errors import ConfigError, ModelError
from medtune.rundir import RunDir
from medtune.tokenizer import resolve_model_source

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def load_base_model(
    model: ModelConfig,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
    quantize: str = "none",
) -> PreTrainedModel:
    """Load `model.base` as a causal LM in `dtype` on `device`, free of any quantization marker.

    attn_implementation: a transformers attention name ("sdpa", "eager", "flash_attention_2", or one
    registered through `transformers.AttentionInterface`); None lets transformers choose.
    quantize: "none", or "nf4" for a QLoRA base: every linear layer of the decoder stored in
    bitsandbytes 4-bit NF4 (see `nf4_config`), the embeddings, norms and output head in `dtype`. A
    Hugging Face base is quantized by transformers while loading (`BitsAndBytesConfig`); a GGUF base
    is dequantized first and then quantized in place with the same settings. Only training asks for
    nf4: merge and export always load the full-precision base.
    Raises ModelError when the source is missing, unreadable, or not a causal language model, and
    ConfigError when nf4 is asked for without bitsandbytes.
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
    quantize_after_load = False
    if quantize == "nf4":
        if "gguf_file" in kwargs:
            quantize_after_load = True  # transformers cannot combine a GGUF source with a quantization_config
        else:
            kwargs["quantization_config"] = nf4_config(dtype)
            kwargs["device_map"] = {"": str(device)}
    elif quantize != "none":
        raise ConfigError(f"train.quantize_base: unknown value {quantize!r}; use none or nf4")
    try:
        loaded = AutoModelForCausalLM.from_pretrained(source.path, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"model.base: cannot load {model.base} as a causal language model: {exc}") from exc
    if quantize == "nf4" and not quantize_after_load:
        return loaded  # placed on `device` while loading; 4-bit weights cannot be moved afterwards
    if _is_quantization_marked(loaded):
        loaded = _rebuild_unquantized(loaded, dtype=dtype, attn_implementation=attn_implementation)
    loaded.to(device)
    if quantize_after_load:
        quantize_nf4_in_place(loaded, dtype)
    return loaded


def merged_adapter(config: RunConfig, run: RunDir) -> Path:
    """The adapter the run's model is made of (merge folds it in, export converts it to GGUF): the
    RL stage's when the config has an `rl` section, else the SFT adapter."""
    return run.rl_adapter if config.rl is not None else run.adapter


def nf4_config(compute_dtype: torch.dtype):
    """The QLoRA recipe as a transformers `BitsAndBytesConfig`: NF4 weights with double-quantized
    block scales, matmuls in `compute_dtype`. The packed 4-bit bytes are stored with dtype
    `compute_dtype` (same bytes, another view) so FSDP sees one dtype per layer and can shard them.
    The output head stays unquantized (transformers' default for bitsandbytes).

    Raises ConfigError when bitsandbytes is not installed.
    """
    _require_bitsandbytes()
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=compute_dtype,
    )


def quantize_nf4_in_place(model: PreTrainedModel, compute_dtype: torch.dtype) -> PreTrainedModel:
    """Quantize an already loaded model's linear layers to NF4 exactly as `nf4_config` does at load time.

    For bases transformers cannot quantize while loading (GGUF) and for models built in memory (the
    benchmarks' random-weight 8B base). Uses transformers' own module replacement, then
    bitsandbytes' `Params4bit` on each weight, on the device the model is on. Returns `model`.
    """
    _require_bitsandbytes()
    import bitsandbytes as bnb
    from transformers.integrations.bitsandbytes import replace_with_bnb_linear

    config = nf4_config(compute_dtype)
    device = next(model.parameters()).device
    skip = ["lm_head"]
    weights = {name: module.weight.data for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    biases = {name: module.bias.data for name, module in model.named_modules()
              if isinstance(module, torch.nn.Linear) and module.bias is not None}
    was_training = model.training
    replace_with_bnb_linear(model, modules_to_not_convert=skip, quantization_config=config)
    model.train(was_training)  # new modules start in train mode; bitsandbytes' CPU kernels differ by mode
    for name, module in model.named_modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        data = weights.pop(name).to(compute_dtype)
        module.weight = bnb.nn.Params4bit(
            data.to("cpu") if device.type == "cpu" else data,
            requires_grad=False,
            quant_type="nf4",
            compress_statistics=True,
            quant_storage=compute_dtype,
            module=module,
        ).to(device)
        if name in biases:
            module.bias = torch.nn.Parameter(biases[name].to(device), requires_grad=False)
        del data
    weights.clear()
    # The markers from_pretrained leaves on a bitsandbytes model: the Trainer and PEFT read them
    # (no `.to()` on 4-bit weights, training allowed only through adapters).
    from transformers.quantizers import AutoHfQuantizer
    from transformers.utils.quantization_config import QuantizationMethod

    model.config.quantization_config = config
    model.hf_quantizer = AutoHfQuantizer.from_config(config, pre_quantized=False)
    model.quantization_method = QuantizationMethod.BITS_AND_BYTES
    model.is_loaded_in_4bit = True
    model.is_quantized = True
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return model


def _require_bitsandbytes() -> None:
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(
            "train.quantize_base: nf4 needs bitsandbytes (pip install 'medtune[qlora]', i.e. bitsandbytes>=0.45); "
            "or set train.quantize_base: none"
        )


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
