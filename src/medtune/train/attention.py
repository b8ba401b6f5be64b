"""Variable-length ("varlen") flash attention for packed batches, registered with transformers.

A packed micro-batch is one row holding several examples back to back. Attention must stay inside
each example: the kernel gets the examples' boundaries (`cu_seq_lens_q`, cumulative lengths) and
runs causal attention per example in one launch, with no mask tensor and no compute across
examples. Two kernels, each registered under its own attention name:
- VARLEN: torch's own `torch.nn.attention.varlen.varlen_attn` (FlashAttention-2 inside torch, no
  extra package);
- FA4: FlashAttention-4's `flash_attn.cute.flash_attn_varlen_func` (the `flash-attn-4` package,
  CuTe DSL kernels compiled at first call; Hopper sm90 and Blackwell sm100), with native GQA (k/v
  keep their own heads). Under torch.compile it is called through the torch.library op
  `medtune::fa4_varlen` with its backward, so the decoder layer stays one graph around it; in eager
  code directly, with FA4's own autograd (the op's Python dispatch would add host time).
On CPU, and for fp32 inputs, a per-example SDPA loop computes the same function, which is what the
tests compare against.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from medtune.errors import ConfigError

VARLEN = "medtune_varlen"
FA4 = "medtune_fa4"
FA4_ARCHES = (9, 10)  # compute capability majors FlashAttention-4 has kernels for: Hopper, Blackwell

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
    """flash-attn 2 (the `flash-attn` distribution; FlashAttention-4 is `flash-attn-4`, the same
    `flash_attn` namespace but no flash_attention_2 kernels)."""
    try:
        importlib.metadata.version("flash-attn")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def fa4_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None and importlib.util.find_spec("flash_attn.cute") is not None


def fa4_gpu() -> bool:
    """A CUDA GPU FlashAttention-4 has kernels for (sm90 Hopper, sm100 Blackwell)."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] in FA4_ARCHES


def resolve_attention(setting: str, *, device_type: str, packing: bool) -> str:
    """The transformers attention implementation to load the model with.

    Packed batches need a kernel that takes the example boundaries: medtune's FA4 or varlen
    function (FlashAttention-4, or torch's flash kernel on a recent GPU, else a per-example SDPA
    loop) or flash-attn's flash_attention_2. (transformers' own SDPA/eager masks built from
    restarting position ids are not relied on: transformers 5.24 lets packed examples attend to
    each other there.) auto: when packing on a GPU, FA4 where `flash-attn-4` is installed and the
    GPU is sm90/sm100, else torch's varlen kernel (flash_attention_2 only where torch's kernel is
    missing and flash-attn is installed); sdpa without packing. Raises ConfigError for impossible
    combinations.
    """
    if setting == "auto":
        if packing and device_type == "cuda" and fa4_installed() and fa4_gpu():
            return register_fa4_attention()
        if packing and device_type == "cuda" and not torch_varlen_available() and flash_attn_installed():
            return "flash_attention_2"
        return register_varlen_attention() if packing else "sdpa"
    if setting == "fa4":
        _require_fa4(device_type, packing)
        return register_fa4_attention()
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


def _require_fa4(device_type: str, packing: bool) -> None:
    if not packing:
        raise ConfigError("train.attention: fa4 only applies to packed batches; set train.packing to on or auto")
    if not fa4_installed():
        raise ConfigError(
            "train.attention: fa4, but FlashAttention-4 is not installed: pip install 'medtune[gpu]' "
            "(flash-attn-4, a pre-release) or use auto"
        )
    if device_type != "cuda" or not fa4_gpu():
        found = f"sm{''.join(map(str, torch.cuda.get_device_capability()))}" if torch.cuda.is_available() else "no CUDA GPU"
        raise ConfigError(
            f"train.attention: fa4 runs on Hopper (sm90) and Blackwell (sm100) GPUs, this machine has {found}; "
            "use auto (torch's varlen kernel there)"
        )


def attention_label(implementation: str) -> str:
    """How the training log and the manifest name an attention implementation."""
    return {VARLEN: "varlen (torch)", FA4: "fa4 (FlashAttention-4)"}.get(implementation, implementation)


def register_varlen_attention() -> str:
    """Register `varlen_attention_forward` under the name VARLEN (idempotent) and return the name."""
    from transformers import AttentionInterface

    packed_kernel("varlen")
    AttentionInterface.register(VARLEN, varlen_attention_forward)
    return VARLEN


def register_fa4_attention() -> str:
    """Register `fa4_attention_forward` under the name FA4 (idempotent) and return the name.

    Importing FlashAttention-4 takes seconds (the CuTe DSL); it happens here, once."""
    from transformers import AttentionInterface

    packed_kernel("fa4")
    AttentionInterface.register(FA4, fa4_attention_forward)
    return FA4


def packed_kernel(name: str) -> Callable[..., torch.Tensor]:
    """The packed attention kernel `name` ('varlen': torch's; 'fa4': FlashAttention-4) as training
    calls it: (q [T, H, D], k, v [T, H_kv, D], cu_seqlens, max_len, scale) -> [T, H, D], causal
    within each example (made once per process; fp32 or CPU inputs take the reference loop)."""
    if name not in _KERNEL:
        _KERNEL[name] = _make_fa4_kernel() if name == "fa4" else _make_kernel()
    return _KERNEL[name]


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


def _make_fa4_kernel() -> Callable[..., torch.Tensor]:
    """The FA4 varlen kernel as a torch.library op with its backward (made once per process)."""
    import flash_attn.cute  # heavy optional dependency (flash-attn-4): imported only when FA4 is chosen
    from flash_attn.cute.interface import _flash_attn_bwd  # the backward FA4's own autograd.Function calls

    def fa4_forward(q, k, v, cu_seqlens, max_len, scale, return_lse=False):
        """FA4's causal varlen call, self-attention within each example (FA4's autograd outside an op)."""
        return flash_attn.cute.flash_attn_varlen_func(
            q, k, v, cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens, max_seqlen_q=max_len, max_seqlen_k=max_len,
            softmax_scale=scale, causal=True, return_lse=return_lse,
        )

    @torch.library.custom_op("medtune::fa4_varlen", mutates_args=(), device_types="cuda")
    def fa4_varlen(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_len: int, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out, lse = fa4_forward(q, k, v, cu_seqlens, max_len, scale, return_lse=True)
        return out, lse

    @fa4_varlen.register_fake
    def _(q, k, v, cu_seqlens, max_len, scale):
        return torch.empty_like(q), q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)

    @torch.library.custom_op("medtune::fa4_varlen_backward", mutates_args=(), device_types="cuda")
    def fa4_varlen_backward(
        grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
        lse: torch.Tensor, cu_seqlens: torch.Tensor, max_len: int, scale: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dq, dk, dv = _flash_attn_bwd(
            q, k, v, out, grad_out.contiguous(), lse, scale, True,
            cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens, max_seqlen_q=max_len, max_seqlen_k=max_len,
        )
        return dq, dk, dv

    @fa4_varlen_backward.register_fake
    def _(grad_out, q, k, v, out, lse, cu_seqlens, max_len, scale):
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    def setup_context(ctx, inputs, output):
        q, k, v, cu_seqlens, max_len, scale = inputs
        ctx.save_for_backward(q, k, v, output[0], output[1], cu_seqlens)
        ctx.max_len, ctx.scale = max_len, scale

    def backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
        dq, dk, dv = fa4_varlen_backward(grad_out, q, k, v, out, lse, cu_seqlens, ctx.max_len, ctx.scale)
        return dq, dk, dv, None, None, None

    fa4_varlen.register_autograd(backward, setup_context=setup_context)

    def kernel(q, k, v, cu_seqlens, max_len, scale):
        if q.device.type != "cuda" or q.dtype not in (torch.bfloat16, torch.float16):
            return reference_varlen_attention(q, k, v, cu_seqlens, max_len, scale)
        scale = scale if scale is not None else q.shape[-1] ** -0.5
        cu_seqlens = cu_seqlens.to(torch.int32)
        if torch.compiler.is_compiling():
            # max_len stays as given (no int()): under torch.compile it may be symbolic, and int() would
            # specialise the graph on every micro-batch's longest example.
            return fa4_varlen(q, k, v, cu_seqlens, max_len, scale)[0]
        # Eager (compile off): FA4's own autograd function, the same kernels without the op's Python dispatch,
        # which costs ~0.45 ms of host time per forward + backward: at the 1B head shape more than the kernels
        # take on the GPU (0.99 vs 1.43 ms a call, same GPU time, same errors; BENCHMARKS.md issue 28, call 15).
        return fa4_forward(q, k, v, cu_seqlens, max_len, scale)[0]

    return kernel


def warm_up_attention(implementation: str, model: torch.nn.Module, dtype: torch.dtype) -> float | None:
    """Run FA4's forward and backward once at the model's head shape, so its one-time compile (2-4 s
    per head shape; other sequence lengths reuse it) is paid before the first timed step. Returns the
    seconds it took, or None when `implementation` needs no warm-up (not FA4, or an fp32 model)."""
    if implementation != FA4 or dtype not in (torch.bfloat16, torch.float16) or not torch.cuda.is_available():
        return None
    config = model.config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    started = time.perf_counter()
    device = torch.device("cuda", torch.cuda.current_device())
    q, k, v = (torch.randn(256, n, head_dim, device=device, dtype=dtype, requires_grad=True) for n in (heads, kv_heads, kv_heads))
    cu_seqlens = torch.tensor([0, 100, 256], device=device, dtype=torch.int32)
    packed_kernel("fa4")(q, k, v, cu_seqlens, 156, head_dim**-0.5).sum().backward()
    torch.cuda.synchronize()
    return time.perf_counter() - started


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


def _attention_function(kernel_name: str, label: str) -> Callable[..., tuple[torch.Tensor, None]]:
    def forward(
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float | None = None,
        dropout: float = 0.0,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        return packed_attention(kernel_name, module, query, key, value, attention_mask, scaling, dropout, **kwargs)

    forward.__name__ = f"{kernel_name}_attention_forward"
    forward.__doc__ = f"""transformers attention function ({label}): query [B, H, S, D] -> output [B, S, H, D].

    Uses `cu_seq_lens_q`/`max_length_q` from the batch (see `medtune.train.packing`); without them
    it derives the boundaries from `position_ids` for a single packed row, and otherwise falls back
    to plain causal SDPA (unpacked inputs such as generation)."""
    return forward


varlen_attention_forward = _attention_function("varlen", "torch's varlen kernel")
fa4_attention_forward = _attention_function("fa4", "FlashAttention-4")


def packed_attention(
    kernel_name: str,
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
    dropout: float,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Packed rows through the registered kernel `kernel_name` (k/v keep their own heads: both
    kernels take GQA as it is); unpacked inputs through transformers' SDPA."""
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
    kernel = _KERNEL.get(kernel_name) or reference_varlen_attention
    out = kernel(q, k, v, cu, max_len, scaling)
    return out.reshape(batch, seq, heads, dim), None
