"""QLoRA (train.quantize_base: nf4) on CPU: bitsandbytes' NF4 kernels run there, so the real path is tested."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from medtune.config import ModelConfig, RunConfig, TrainConfig
from medtune.errors import ConfigError
from medtune.train.trainer import plan_training
from train_fixtures import write_prepared

needs_bnb = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")


def test_quantize_base_is_validated():
    assert TrainConfig().quantize_base == "none"
    assert TrainConfig(quantize_base="nf4").quantize_base == "nf4"
    with pytest.raises(ValueError, match="quantize_base"):
        TrainConfig(quantize_base="int4")


def test_plan_rejects_what_qlora_cannot_do(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    gpu = plan_training(TrainConfig(quantize_base="nf4"), device_type="cuda", world_size=1)
    assert gpu.quantize_base == "nf4" and gpu.compile is False  # auto does not compile 4-bit layers
    assert gpu.describe()["base_weights"] == "nf4 (QLoRA)"
    with pytest.raises(ConfigError, match="train.compile"):
        plan_training(TrainConfig(quantize_base="nf4", compile="on"), device_type="cuda", world_size=1)
    with pytest.raises(ConfigError, match="fsdp"):
        plan_training(TrainConfig(quantize_base="nf4", distributed="fsdp"), device_type="cuda", world_size=2)
    with pytest.raises(ConfigError, match="precision"):
        plan_training(TrainConfig(quantize_base="nf4", precision="fp16"), device_type="cuda", world_size=1)


def test_nf4_without_bitsandbytes_is_a_clear_error(monkeypatch, tiny_llama_dir):
    from medtune.modeling import load_base_model

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(ConfigError, match="bitsandbytes"):
        load_base_model(ModelConfig(base=str(tiny_llama_dir)), quantize="nf4")


@needs_bnb
def test_nf4_base_loads_4bit_and_matches_in_place_quantization(tiny_llama_dir):
    """from_pretrained with BitsAndBytesConfig and the in-place path give the same 4-bit model."""
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    from medtune.modeling import load_base_model, nf4_config, quantize_nf4_in_place

    loaded = load_base_model(ModelConfig(base=str(tiny_llama_dir)), quantize="nf4")
    full = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32)
    full_bytes = sum(p.numel() * p.element_size() for p in full.model.layers.parameters())
    ids = torch.randint(5, 400, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = full(input_ids=ids).logits
        in_place = quantize_nf4_in_place(full, torch.float32)
        assert isinstance(in_place.model.layers[0].mlp.down_proj, bnb.nn.Linear4bit)
        assert isinstance(loaded.model.layers[1].self_attn.q_proj, bnb.nn.Linear4bit)
        assert not isinstance(loaded.lm_head, bnb.nn.Linear4bit)  # the output head stays full precision
        a, b = loaded(input_ids=ids).logits, in_place(input_ids=ids).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert 0 < float((a - reference).norm() / reference.norm()) < 0.5  # 4-bit rounding, not garbage
    config = nf4_config(torch.bfloat16)
    assert (config.bnb_4bit_quant_type, config.bnb_4bit_use_double_quant, config.bnb_4bit_compute_dtype) == (
        "nf4", True, torch.bfloat16)
    packed = sum(p.numel() * p.element_size() for p in loaded.model.layers.parameters())
    assert packed < 0.3 * full_bytes  # 4-bit linear weights (+ fp32 norms) against fp32 layers


@needs_bnb
@pytest.mark.slow
def test_qlora_trains_and_merges_into_the_full_precision_base(tiny_llama_dir, smollm2_tokenizer, tmp_path):
    """train.quantize_base: nf4 end to end on CPU: LoRA weights train, the merge loads an fp32 base."""
    from safetensors.torch import load_file

    from medtune.artifacts import record_stage
    from medtune.pipeline import run_stage

    config = RunConfig.model_validate({
        "name": "qlora", "output_dir": str(tmp_path), "data": {"files": ["unused.jsonl"]},
        "model": {"base": str(tiny_llama_dir)},
        "train": {"max_steps": 3, "batch_size": 4, "gradient_accumulation_steps": 1, "learning_rate": 1e-2,
                  "logging_steps": 1, "eval_steps": 3, "save_steps": 3, "test_question": False, "quantize_base": "nf4",
                  "gradient_checkpointing": True},
    })
    write_prepared(config.run_dir, smollm2_tokenizer, n_train=12, n_val=4)
    record_stage(config.run_dir, "prepare", {"status": "done", "outputs_digest": "test"})
    result = run_stage(config, "train").result
    assert result.plan["base_weights"] == "nf4 (QLoRA)" and result.steps == 3
    adapter = load_file(str(config.run_dir / "adapter" / "adapter_model.safetensors"))
    assert adapter and all(t.dtype == torch.float32 for t in adapter.values())
    assert any(float(t.abs().sum()) > 0 for k, t in adapter.items() if "lora_B" in k)  # B started at zero: it trained
    merged = run_stage(config, "merge").result
    assert merged.dtype == "fp32" and merged.top1_agreement == 1.0
    weights = load_file(str(config.run_dir / "merged" / "model.safetensors"))
    assert all(t.dtype == torch.float32 for t in weights.values())  # a full-precision merge, not 4-bit bytes
    assert not any("absmax" in k or "quant" in k for k in weights)
