"""FlashAttention-4 in training (train.attention: fa4), on a Hopper/Blackwell GPU with flash-attn-4
installed; skipped elsewhere (CPU CI included).

One training step on real packed micro-batches (medtune's PackedDataset/PackedCollator over the
benchmark length mix, 16,384 tokens, ~30 examples, GQA at the Llama-3.2-1B head shape): the loss
and every LoRA gradient with FA4 equal those with today's kernel (torch's varlen FlashAttention-2)
within bf16 tolerance; and the same under regional torch.compile with fused projections and
gradient checkpointing, with no graph break around the FA4 op. Eager steps call FA4's own autograd
function, compiled ones the `medtune::fa4_varlen` op, so the second test holds the two paths to each other.
"""

from __future__ import annotations

import pytest
import torch

from medtune.config import LoraConfig
from medtune.train.attention import FA4, VARLEN, fa4_gpu, fa4_installed, register_fa4_attention, register_varlen_attention
from medtune.train.fused_projections import fuse_projections
from medtune.train.measure import synthetic_examples
from medtune.train.packing import ExampleRows, PackedCollator, PackedDataset
from medtune.train.trainer import compile_regions, prepare_lora_model

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and fa4_gpu() and fa4_installed()),
    reason="needs an sm90/sm100 GPU and flash-attn-4 (pip install 'medtune[gpu]')",
)

VOCAB = 4096
TOKENS = 16384


def _model(attention: str, seed: int = 0):
    """A 2-layer Llama at the 1B head shape (32 q / 8 kv heads of 64), bf16, with a LoRA adapter on
    q/k/v/o whose B matrices are random too (so that A gets a gradient as well)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=2048, intermediate_size=2048, num_hidden_layers=2,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096,
                         use_cache=False)
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation=attention).cuda()
    model = prepare_lora_model(base, LoraConfig(r=8, alpha=16, dropout=0.0,
                                                target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    generator = torch.Generator(device="cuda").manual_seed(seed + 1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(0.02 * torch.randn(parameter.shape, device="cuda", generator=generator))
    return model


def _packed_batches(count: int = 2) -> list[dict]:
    examples = [{"input_ids": t, "labels": t} for t in synthetic_examples(600, VOCAB, seed=0)]
    packed = PackedDataset(ExampleRows(examples), TOKENS, seed=0)
    collate = PackedCollator()
    batches = []
    for index in range(count):
        batch = collate([packed[index]])
        batch.pop("num_real_tokens")
        batches.append({k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()})
    return batches


def _step(model, batch) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.requires_grad}
    return float(loss), grads


def _assert_close(reference, candidate, what: str) -> None:
    loss_a, grads_a = reference
    loss_b, grads_b = candidate
    assert abs(loss_a - loss_b) <= 2e-3 * abs(loss_a), f"{what}: loss {loss_a} vs {loss_b}"
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        a, b = grads_a[name], grads_b[name]
        relative = float((a - b).norm() / a.norm().clamp_min(1e-12))
        # bf16 attention (8 bits of mantissa) in both kernels, differently ordered sums: ~1e-2 relative
        assert relative < 3e-2, f"{what}: {name} gradient differs by {relative:.3g} (relative norm)"


def test_fa4_step_equals_todays_kernel_on_packed_batches():
    register_varlen_attention(), register_fa4_attention()
    batches = _packed_batches()
    assert all(b["cu_seq_lens_q"].numel() > 20 for b in batches)  # many examples per micro-batch
    varlen, fa4 = _model(VARLEN), _model(FA4)
    for batch in batches:
        _assert_close(_step(varlen, batch), _step(fa4, batch), "FA4 vs varlen")


def test_fa4_under_compile_with_fused_projections_and_checkpointing():
    """The shipped GPU path (regional compile, fused q/k/v: the torch.library op) plus gradient
    checkpointing: same loss and gradients as eager FA4 (FA4's own autograd function), and Dynamo
    compiles each layer without a graph break."""
    from torch._dynamo.utils import counters

    register_fa4_attention()
    batch = _packed_batches(1)[0]
    eager = _step(_model(FA4), batch)
    model = _model(FA4)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    fuse_projections(model)
    compile_regions(model)
    torch._dynamo.reset()
    counters.clear()
    compiled = _step(model, batch)
    _assert_close(eager, compiled, "compiled FA4 vs eager FA4")
    every_break = dict(counters["graph_break"])
    print(f"graph breaks under compile: {every_break or 'none'}")
    breaks = {reason: n for reason, n in every_break.items() if "fa4" in str(reason).lower() or "flash" in str(reason).lower()}
    assert not breaks, f"graph breaks around the FA4 op: {breaks}"
