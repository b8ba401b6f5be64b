"""Fused q/k/v (and gate/up) projections: the same loss and LoRA gradients as PEFT's module-by-module
forward, on packed batches through medtune's varlen attention, and a clean undo."""

from __future__ import annotations

import pytest
import torch

from medtune.train.fused_projections import fuse_projections, project_group, unfuse_projections
from medtune.train.packing import PackedCollator


def _tiny_lora_model(target_modules, dropout=0.0, seed=0):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    config.use_cache = False  # as medtune's prepare_lora_model sets for training
    model = get_peft_model(LlamaForCausalLM(config),
                           LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=target_modules))
    with torch.no_grad():  # PEFT starts B at zero, which would hide a wrong LoRA path
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    return model


def _packed_batch(seed=1):
    rng = torch.Generator().manual_seed(seed)
    examples = []
    for n in (7, 12, 5):
        ids = torch.randint(3, 97, (n,), generator=rng).numpy()
        examples.append({"input_ids": ids, "labels": ids.copy()})
    batch = PackedCollator()([examples])
    batch.pop("num_real_tokens")
    return batch


def _loss_and_lora_grads(model, batch):
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


@pytest.mark.parametrize(
    ("targets", "attention", "mlp", "frozen_mlp"),
    [
        (["q_proj", "k_proj", "v_proj", "o_proj"], 2, 0, False),  # the seed's adapter: the MLP stays frozen, unfused
        (["q_proj", "k_proj", "v_proj", "o_proj"], 2, 2, True),  # ... or its frozen gate/up as one GEMM
        (["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], 2, 2, False),  # all linear
        (["q_proj", "v_proj"], 2, 0, False),  # PEFT's classic pair: k_proj is a plain Linear inside the group
        (["q_proj", "v_proj", "up_proj"], 2, 0, True),  # a half-adapted gate/up pair is left alone
    ],
)
def test_fused_groups_give_peft_loss_and_gradients(targets, attention, mlp, frozen_mlp):
    from medtune.train.attention import register_varlen_attention

    model = _tiny_lora_model(targets)
    model.base_model.model.set_attn_implementation(register_varlen_attention())
    batch = _packed_batch()
    loss, grads = _loss_and_lora_grads(model, batch)

    report = fuse_projections(model, frozen_mlp=frozen_mlp)
    assert (report.attention_blocks, report.mlp_blocks, report.skipped) == (attention, mlp, ())
    # The fused path reads the members' weights and never calls the member modules themselves.
    calls = []
    for name, module in model.named_modules():
        if name.endswith(("q_proj", "k_proj", "v_proj") + (("gate_proj", "up_proj") if mlp else ())):
            module.register_forward_hook(lambda *_: calls.append(1))
    fused_loss, fused_grads = _loss_and_lora_grads(model, batch)
    assert calls == []
    torch.testing.assert_close(fused_loss, loss, rtol=1e-5, atol=1e-6)
    assert set(fused_grads) == set(grads) and any("lora_A" in n for n in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)

    assert unfuse_projections(model) == attention + mlp
    assert not any("forward" in vars(m) for m in model.modules())


def test_group_falls_back_to_module_by_module_when_adapters_are_disabled():
    model = _tiny_lora_model(["q_proj", "k_proj", "v_proj"])
    attention = model.base_model.model.model.layers[0].self_attn
    members = (attention.q_proj, attention.k_proj, attention.v_proj)
    x = torch.randn(1, 6, 64)
    with torch.no_grad():
        for got, want in zip(project_group(x, members), [m(x) for m in members]):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        with model.disable_adapter():  # the base model alone, as a reference-model pass would want it
            base_only = [m.base_layer(x) for m in members]
            for got, want in zip(project_group(x, members), base_only):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(base_only[0], members[0](x))  # the LoRA term is there when enabled


def test_dropout_is_one_mask_for_the_group_and_off_in_eval():
    model = _tiny_lora_model(["q_proj", "k_proj", "v_proj"], dropout=0.5)
    attention = model.base_model.model.model.layers[0].self_attn
    members = (attention.q_proj, attention.k_proj, attention.v_proj)
    x = torch.randn(1, 64, 64)
    model.eval()
    with torch.no_grad():
        for got, want in zip(project_group(x, members), [m(x) for m in members]):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    model.train()
    with torch.no_grad():
        # One mask: recomputing each member's LoRA term from the same dropped input reproduces it.
        torch.manual_seed(5)
        outputs = project_group(x, members)
        torch.manual_seed(5)
        dropped = members[0].lora_dropout["default"](x)
        for out, member in zip(outputs, members):
            lora = member.lora_B["default"](member.lora_A["default"](dropped)) * member.scaling["default"]
            torch.testing.assert_close(out, member.base_layer(x) + lora, rtol=1e-5, atol=1e-5)


def test_generation_uses_transformers_attention_and_matches_unfused():
    model = _tiny_lora_model(["q_proj", "k_proj", "v_proj", "o_proj"]).eval()
    prompt = torch.tensor([[5, 9, 11, 4]])
    with torch.no_grad():
        want = model.generate(input_ids=prompt, max_new_tokens=6, do_sample=False, use_cache=True)
        fuse_projections(model)
        got = model.generate(input_ids=prompt, max_new_tokens=6, do_sample=False, use_cache=True)
    assert torch.equal(got, want)


def test_fuse_leaves_a_patched_forward_alone_and_undo_keeps_it():
    model = _tiny_lora_model(["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"])
    mlp = model.base_model.model.model.layers[1].mlp
    foreign = mlp.forward  # stands for another library's patch (Liger's SwiGLU binds one like this)
    mlp.forward = foreign
    report = fuse_projections(model)
    assert (report.attention_blocks, report.mlp_blocks) == (2, 1)
    assert len(report.skipped) == 1 and "layers.1.mlp" in report.skipped[0] and "already patched" in report.skipped[0]
    unfuse_projections(model)
    assert vars(mlp)["forward"] is foreign


def test_plan_turns_fused_projections_on_with_compile_only():
    from medtune.config import TrainConfig
    from medtune.errors import ConfigError
    from medtune.train.trainer import plan_training

    assert plan_training(TrainConfig(), device_type="cpu").fused_projections is False
    assert plan_training(TrainConfig(compile="on"), device_type="cpu").fused_projections is True
    assert plan_training(TrainConfig(compile="on", fused_projections="off"), device_type="cpu").fused_projections is False
    assert plan_training(TrainConfig(fused_projections=True), device_type="cpu").fused_projections is True
    with pytest.raises(ConfigError, match="train.fused_projections: on .* fsdp"):
        plan_training(TrainConfig(fused_projections="on", distributed="fsdp"), device_type="cuda", world_size=2)
