"""Variable-length ("varlen") flash attention for packed batches, registered with transformers.

A packed micro-batch is one row holding several examples back to back. Attention must stay inside
each example: the kernel gets the examples' boundaries (`cu_seq_lens_q`, cumulative lengths) and
runs causal attention per example in one launch, with no mask tensor and no compute across
examples. The kernel is torch's own `torch.nn.attention.varlen.varlen_attn` (FlashAttention-2
inside torch, no extra package); on CPU a per-example SDPA loop computes the same function, which
is what the tests compare against.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from medtune.errors import ConfigError

VARLEN = "medtune_varlen"

_KERNEL: dict[str, Any] = {}


def torch_varlen_available() -> bool:
    """True when torch ships varlen_attn and a CUDA GPU of compute capability >= 8.0 is present."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0):
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def resolve_attention(setting: str, *, device_type: str, packing: bool) -> str:
    """The transformers attention implementation to load the model with.

    Packed batches need a kernel that takes the example boundaries: medtune's varlen function
    (torch's flash kernel on a recent GPU, else a per-example SDPA loop) or flash-attn's
    flash_attention_2. (transformers' own SDPA/eager masks built from restarting position ids
    are not relied on: transformers 5.24 lets packed examples attend to each other there.)
    auto: varlen when packing (flash_attention_2 only where torch's kernel is missing and
    flash-attn is installed), sdpa otherwise. Raises ConfigError for impossible combinations.
    """
    if setting == "auto":
        if packing and device_type == "cuda" and not torch_varlen_available() and flash_attn_installed():
            return "flash_attention_2"
        return register_varlen_attention() if packing else "sdpa"
    if setting == "varlen":
        if not packing:
            raise ConfigError("train.attention: varlen only applies to packed batches; set train.packing to on or auto")
        return register_varlen_attention()
    if setting == "flash_attention_2" and not flash_attn_installed():
        raise ConfigError("train.attention: flash_attention_2 needs the flash-attn package; use auto (torch's varlen kernel) or sdpa")
    if packing and setting != "flash_attention_2":
        raise ConfigError(
            f"train.attention: {setting} cannot keep packed examples apart; use auto or varlen, or set train.packing: off"
        )
    return setting


def register_varlen_attention() -> str:
    """Register `varlen_attention_forward` under the name VARLEN (idempotent) and return the name."""
    from transformers import AttentionInterface

    if not _KERNEL:
        _KERNEL["fn"] = _make_kernel()
    AttentionInterface.register(VARLEN, varlen_attention_forward)
    return VARLEN


def _make_kernel() -> Callable[..., torch.Tensor]:
    """Adapt to the varlen_attn signature of the installed torch; CPU gets the reference loop."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return reference_varlen_attention
    params = inspect.signature(varlen_attn).parameters
    causal = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}
    has_scale, has_gqa = "scale" in params, "enable_gqa" in params
    gpu_ok = torch_varlen_available()  # decided once: nothing to trace inside compiled layers

    def kernel(q, k, v, cu_seqlens, max_len, scale):
        if not gpu_ok or q.device.type != "cuda" or q.dtype == torch.float32:
            return reference_varlen_attention(q, k, v, cu_seqlens, max_len, scale)
        extra: dict[str, Any] = dict(causal)
        if scale is not None and has_scale:
            extra["scale"] = scale
        if k.shape[1] != q.shape[1]:
            if has_gqa:
                extra["enable_gqa"] = True
            else:
                k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
                v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
        return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, **extra)

    return kernel


def reference_varlen_attention(q, k, v, cu_seqlens, max_len, scale):
    """Causal SDPA run separately on each example: [T, H, D] in, [T, H, D] out."""
    heads, kv_heads = q.shape[1], k.shape[1]
    bounds = cu_seqlens.tolist()
    outputs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end == start:
            continue
        qs = q[start:end].transpose(0, 1)
        ks = k[start:end].transpose(0, 1).repeat_interleave(heads // kv_heads, dim=0)
        vs = v[start:end].transpose(0, 1).repeat_interleave(heads // kv_heads, dim=0)
        outputs.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale).transpose(0, 1))
    return torch.cat(outputs, dim=0)


def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Example boundaries of a packed row from its restarting position ids ([1, T])."""
    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0, as_tuple=False).reshape(-1)
    total = torch.tensor([flat.numel()], device=flat.device)
    cu = torch.cat([starts, total]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: query [B, H, S, D] -> output [B, S, H, D].

    Uses `cu_seq_lens_q`/`max_length_q` from the batch (see `medtune.train.packing`); without them
    it derives the boundaries from `position_ids` for a single packed row, and otherwise falls back
    to plain causal SDPA (unpacked inputs such as generation).
    """
    cu = kwargs.get("cu_seq_lens_q")
    max_len = kwargs.get("max_length_q")
    batch, heads, seq, dim = query.shape
    if cu is None and batch == 1 and seq > 1 and kwargs.get("position_ids") is not None and attention_mask is None:
        cu, max_len = cu_seqlens_from_position_ids(kwargs["position_ids"])
    if cu is None or key.shape[2] != seq:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    kv_heads = key.shape[1]
    q = query.transpose(1, 2).reshape(batch * seq, heads, dim)
    k = key.transpose(1, 2).reshape(batch * seq, kv_heads, dim)
    v = value.transpose(1, 2).reshape(batch * seq, kv_heads, dim)
    kernel = _KERNEL.get("fn") or reference_varlen_attention
    out = kernel(q, k, v, cu, max_len, scaling)
    return out.reshape(batch, seq, heads, dim), None
