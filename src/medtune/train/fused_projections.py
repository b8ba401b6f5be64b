"""Sibling projections in one matmul: q/k/v of each attention block, gate/up of each LoRA-adapted MLP.

q_proj, k_proj and v_proj read the same normed hidden states. Run one by one (as transformers and
PEFT do) they are three base GEMMs (k and v are narrow: 512 columns for Llama-3.2-1B), three LoRA
dropouts, three LoRA-A GEMMs that each re-read the whole input, and in backward three input
gradients summed by extra passes over the activations. Fused: one GEMM over the concatenated
frozen weights, one dropout and one LoRA-A GEMM over the concatenated A matrices, one LoRA-B GEMM
over their block-diagonal; the outputs are split and the rest of the layer is unchanged.

The function is PEFT's, with one difference when lora.dropout > 0: the group's adapters share
one dropout mask (PEFT draws one per module). Parameters, their names and the saved adapter are
PEFT's own: only each attention (and MLP) module's `forward` is replaced, on the instance, and
`unfuse_projections` restores it. A group whose modules are in any other state at call time
(adapters disabled or merged, several active adapters, DoRA) runs module by module as before.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# transformers classes whose forward the fused ones below reproduce (checked against 5.17 and 5.25).
ATTENTION_CLASSES = frozenset({"LlamaAttention"})
MLP_CLASSES = frozenset({"LlamaMLP"})
_FUSED_MARK = "_medtune_fused_projections"


@dataclass(frozen=True)
class FusionReport:
    attention_blocks: int
    mlp_blocks: int
    skipped: tuple[str, ...] = ()  # "module name: why" for each block left unfused


def _lora_linear_class():
    try:
        from peft.tuners.lora import Linear
    except ImportError:  # pragma: no cover - peft is a dependency
        return None
    return Linear


def _structurally_fusable(module: nn.Module) -> str | None:
    """Why `module` cannot take part in a fused group, or None when it can."""
    if type(module) is nn.Linear:
        return None
    lora_linear = _lora_linear_class()
    if lora_linear is None or type(module) is not lora_linear:
        return f"{type(module).__name__} is neither nn.Linear nor PEFT's lora.Linear"
    if type(module.base_layer) is not nn.Linear:
        return f"its base layer is {type(module.base_layer).__name__} (a quantized base is not fused)"
    if module.fan_in_fan_out:
        return "fan_in_fan_out weights"
    return None


@dataclass(frozen=True)
class _Adapter:
    a: torch.Tensor  # (r, in)
    b: torch.Tensor  # (out, r)
    scaling: float
    dropout: nn.Module


def _active_adapter(module: nn.Module) -> _Adapter | None | bool:
    """The one active adapter of a lora.Linear; None for a plain Linear; False when the module's
    state at this call (disabled, merged, several adapters, DoRA or another variant) is not fusable."""
    if type(module) is nn.Linear:
        return None
    if module.disable_adapters or module.merged:
        return False
    active = module.active_adapters
    if len(active) != 1 or active[0] not in module.lora_A:
        return False
    name = active[0]
    if module.use_dora.get(name) or getattr(module, "lora_variant", {}).get(name) is not None:
        return False
    if getattr(module, "lora_bias", {}).get(name):
        return False
    return _Adapter(module.lora_A[name].weight, module.lora_B[name].weight, module.scaling[name], module.lora_dropout[name])


def _base_linear(module: nn.Module) -> nn.Linear:
    return module if type(module) is nn.Linear else module.base_layer


def _same_dropout(first: nn.Module, other: nn.Module) -> bool:
    if isinstance(first, nn.Identity) and isinstance(other, nn.Identity):
        return True
    return isinstance(first, nn.Dropout) and isinstance(other, nn.Dropout) and first.p == other.p


def project_group(x: torch.Tensor, members: Sequence[nn.Module]) -> list[torch.Tensor]:
    """`[m(x) for m in members]` for linear layers (plain or PEFT LoRA) that share the input `x`,
    computed with one base GEMM and one LoRA-A / LoRA-B GEMM pair for the whole group."""
    adapters = [_active_adapter(m) for m in members]
    present = [a for a in adapters if a]
    if any(a is False for a in adapters) or not all(_same_dropout(present[0].dropout, a.dropout) for a in present[1:]):
        return [m(x) for m in members]
    bases = [_base_linear(m) for m in members]
    if any(b.bias is not None for b in bases) and not all(b.bias is not None for b in bases):
        return [m(x) for m in members]
    weight = torch.cat([b.weight for b in bases])
    bias = torch.cat([b.bias for b in bases]) if bases[0].bias is not None else None
    out = F.linear(x, weight, bias)
    if present:
        a = torch.cat([p.a for p in present])
        # One block per member: its B (scaled) under its own rows of A; a plain member's block is
        # its output width of zeros, so the split below lines up with the base output.
        blocks = [
            p.b * p.scaling if p else torch.zeros(b.out_features, 0, dtype=a.dtype, device=a.device)
            for p, b in zip(adapters, bases, strict=True)
        ]
        hidden = F.linear(present[0].dropout(x.to(a.dtype)), a)
        out = (out + F.linear(hidden, torch.block_diag(*blocks))).to(out.dtype)
    return list(out.split([b.out_features for b in bases], dim=-1))


def _fused_attention_forward(attention: nn.Module) -> Callable:
    modeling = sys.modules[type(attention).__module__]
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    def forward(hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        if cache is not None or position_embeddings is None:  # generation: transformers' own forward
            return type(attention).forward(attention, hidden_states, position_embeddings, attention_mask, **kwargs)
        kwargs.pop("past_key_values", None)
        kwargs.pop("cache", None)
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, attention.head_dim)
        query, key, value = project_group(hidden_states, (attention.q_proj, attention.k_proj, attention.v_proj))
        query = query.view(hidden_shape).transpose(1, 2)
        key = key.view(hidden_shape).transpose(1, 2)
        value = value.view(hidden_shape).transpose(1, 2)
        cos, sin = position_embeddings
        # Looked up at call time: Liger's eager rotary kernel patches the modeling module's function.
        query, key = modeling.apply_rotary_pos_emb(query, key, cos, sin)
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            attention.config._attn_implementation, modeling.eager_attention_forward
        )
        output, weights = interface(
            attention, query, key, value, attention_mask,
            dropout=0.0 if not attention.training else attention.attention_dropout,
            scaling=attention.scaling, **kwargs,
        )
        output = output.reshape(*input_shape, -1).contiguous()
        return attention.o_proj(output), weights

    return forward


def _fused_mlp_forward(mlp: nn.Module) -> Callable:
    def forward(x):
        gate, up = project_group(x, (mlp.gate_proj, mlp.up_proj))
        return mlp.down_proj(mlp.act_fn(gate) * up)

    return forward


def _group_problem(module: nn.Module, names: Sequence[str]) -> str | None:
    for name in names:
        member = getattr(module, name, None)
        if member is None:
            return f"no {name}"
        problem = _structurally_fusable(member)
        if problem:
            return f"{name}: {problem}"
    return None


def fuse_projections(model: nn.Module, *, frozen_mlp: bool = False) -> FusionReport:
    """Give each Llama attention block a forward that runs q/k/v as one group, and each MLP whose
    gate and up projections both carry LoRA one that runs them as one group; with `frozen_mlp`, a
    gate/up pair without LoRA too (its weights concatenated at every step: 0.98x and +1.1 GiB on
    the 1B workload, BENCHMARKS.md issue 14, so the trainer leaves it off). Idempotent; returns
    what was fused."""
    lora_linear = _lora_linear_class()
    attention_blocks = mlp_blocks = 0
    skipped: list[str] = []
    for name, module in model.named_modules():
        kind = type(module).__name__
        if kind in ATTENTION_CLASSES:
            members, make = ("q_proj", "k_proj", "v_proj"), _fused_attention_forward
        elif kind in MLP_CLASSES:
            members, make = ("gate_proj", "up_proj"), _fused_mlp_forward
            kinds = {type(getattr(module, m, None)) for m in members}
            if kinds != {lora_linear} and not (frozen_mlp and kinds == {nn.Linear}):
                continue
        else:
            continue
        if "forward" in vars(module) and vars(module)["forward"] is not getattr(module, _FUSED_MARK, None):
            skipped.append(f"{name}: its forward is already patched (by {type(vars(module)['forward']).__name__})")
            continue
        problem = _group_problem(module, members)
        if problem:
            skipped.append(f"{name}: {problem}")
            continue
        module.forward = make(module)
        setattr(module, _FUSED_MARK, module.forward)
        if kind in ATTENTION_CLASSES:
            attention_blocks += 1
        else:
            mlp_blocks += 1
    return FusionReport(attention_blocks, mlp_blocks, tuple(skipped))


def unfuse_projections(model: nn.Module) -> int:
    """Undo `fuse_projections`; returns the number of modules restored."""
    restored = 0
    for module in model.modules():
        ours = vars(module).pop(_FUSED_MARK, None)
        if ours is not None and vars(module).get("forward") is ours:  # not a later patch (Liger's) over it
            del module.forward
            restored += 1
    return restored
