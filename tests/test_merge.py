"""The merge stage on tiny random Llamas with real tokenizers: merged == base + adapter, EOS ids, clean
config, and a second merge of the same inputs is "already merged"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medtune.artifacts import read_manifest, record_stage, sha256_file
from medtune.errors import ArtifactError
from medtune.merge import ALREADY_MERGED, check_agreement, generation_eos_ids, merge_adapter
from medtune.pipeline import run_stage
from medtune.rundir import RunDir
from medtune.verify import verification_prompts


def make_adapter_run(root: Path, base_dir: Path, name: str = "tiny", *, export: dict | None = None, tokenizer=None,
                     base: str | None = None):
    """A run folder as the train stage leaves it: adapter/ (non-zero LoRA weights + tokenizer with a
    fixed pad token) and data/val (column `messages`, JSON strings), with prepare and train marked
    done in the manifest so `pipeline.run_stage` runs merge and export on it. Returns the RunConfig."""
    import datasets
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medtune.config import RunConfig
    from medtune.tokenizer import fix_pad_token

    config = RunConfig.model_validate(
        {"name": name, "output_dir": str(root), "data": {"files": ["builtin:reasonmed-sample"]},
         "model": {"base": base or str(base_dir), "license": "apache-2.0"}, "export": export or {}}
    )
    run = RunDir.of(config)
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
        fix_pad_token(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param_name, param in peft_model.named_parameters():
            if "lora_B" in param_name:  # PEFT starts B at zero: make the adapter actually change the model
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    peft_model.save_pretrained(run.adapter)
    tokenizer.save_pretrained(run.adapter)
    conversations = [
        [{"role": "user", "content": f"Question {i}: which organ filters the blood? A. Liver B. Kidney C. Lung"},
         {"role": "assistant", "content": "The kidney filters the blood. The answer is B."}]
        for i in range(3)
    ]
    datasets.Dataset.from_dict({"messages": [json.dumps(c) for c in conversations]}).save_to_disk(str(run.split("val")))
    for stage in ("prepare", "train"):  # made here, not by those stages: any digest will do
        record_stage(run.root, stage, {"status": "done", "outputs_digest": f"test-{stage}"})
    return config


def test_merge_matches_adapter_and_saves_a_clean_model(tmp_path, tiny_llama_dir):
    from transformers import AutoTokenizer, GenerationConfig

    config = make_adapter_run(tmp_path, tiny_llama_dir)
    result = run_stage(config, "merge").result

    assert result.top1_agreement == 1.0
    assert result.max_abs_diff <= config.merge.max_abs_diff
    assert result.prompt_source == "validation split" and result.prompts == 3 and result.dtype == "fp32"
    merged = RunDir.of(config).merged
    assert (merged / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((merged / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.chat_template and tokenizer.pad_token_id != tokenizer.eos_token_id
    generation = GenerationConfig.from_pretrained(str(merged))
    assert generation.eos_token_id[0] == eot
    assert json.loads((merged / "merge_verification.json").read_text())["top1_agreement"] == 1.0
    entry = read_manifest(RunDir.of(config).root)["stages"]["merge"]
    assert entry["status"] == "done" and entry["top1_agreement"] == 1.0
    assert any(o["path"].endswith("model.safetensors") for o in entry["outputs"])


def test_merge_makes_end_of_turn_the_eos(tmp_path, tiny_llama_dir):
    """A tokenizer whose EOS is not the template's end-of-turn token (base-model style) gets fixed."""
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_end|>"]})  # as in the hub's SmolLM2
    tokenizer.eos_token = "<|endoftext|>"
    tokenizer.pad_token = "<repo_name>"
    config = make_adapter_run(tmp_path, tiny_llama_dir, tokenizer=tokenizer)
    run = RunDir.of(config)
    result = merge_adapter(config, run)
    assert result.end_of_turn == "<|im_end|>"
    assert any("EOS token set" in note for note in result.notes)
    merged = AutoTokenizer.from_pretrained(str(run.merged))
    assert merged.eos_token == "<|im_end|>"
    ids = GenerationConfig.from_pretrained(str(run.merged)).eos_token_id
    assert ids[0] == merged.convert_tokens_to_ids("<|im_end|>")
    assert merged.convert_tokens_to_ids("<|endoftext|>") in ids


def test_merge_llama3_rope_variant(tmp_path, tiny_llama3_rope_dir, llama3_tokenizer):
    config = make_adapter_run(tmp_path, tiny_llama3_rope_dir, name="tiny3")
    result = merge_adapter(config, RunDir.of(config))
    assert result.top1_agreement == 1.0
    assert result.end_of_turn == "<|eot_id|>"
    assert result.eos_token_ids[0] == llama3_tokenizer.convert_tokens_to_ids("<|eot_id|>")


def test_merge_without_adapter_says_what_to_run(tmp_path):
    from medtune.config import RunConfig

    config = RunConfig.model_validate({"name": "x", "output_dir": str(tmp_path), "data": {"files": ["a.jsonl"]}})
    with pytest.raises(ArtifactError, match="medtune train"):
        merge_adapter(config, RunDir.of(config))


def test_agreement_rules():
    check_agreement("fp32", 1e-5, 1.0, 1e-3)
    with pytest.raises(ArtifactError, match="top-1 agreement"):
        check_agreement("fp32", 1e-5, 0.999, 1e-3)
    with pytest.raises(ArtifactError, match="merge.max_abs_diff"):
        check_agreement("fp32", 0.5, 1.0, 1e-3)
    check_agreement("bf16", 0.5, 0.995, 1e-3)  # 16-bit weights: near-ties may flip
    with pytest.raises(ArtifactError):
        check_agreement("bf16", 0.5, 0.9, 1e-3)


def test_generation_eos_ids_put_end_of_turn_first(smollm2_tokenizer):
    eot = smollm2_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert generation_eos_ids(smollm2_tokenizer, "<|im_end|>", [0, eot]) == [eot, 0]
    assert generation_eos_ids(smollm2_tokenizer, "<|im_end|>", None) == [eot]


def test_fallback_prompts_without_validation_split(tmp_path, smollm2_tokenizer):
    prompts, source = verification_prompts(RunDir(tmp_path), smollm2_tokenizer, 2)
    assert len(prompts) == 2 and "built-in" in source


def test_merging_the_same_inputs_again_is_already_merged(tmp_path, tiny_llama_dir):
    """Idempotent: the same adapter and settings return the recorded result and leave merged/ as it
    was; a changed adapter (or merge section) merges again."""
    config = make_adapter_run(tmp_path, tiny_llama_dir)
    run = RunDir.of(config)
    first = merge_adapter(config, run)
    assert ALREADY_MERGED not in first.notes
    before = {p.name: sha256_file(p) for p in run.merged.iterdir()}
    again = merge_adapter(config, run)
    assert again.notes == [*first.notes, ALREADY_MERGED] and again.top1_agreement == first.top1_agreement
    assert again.merged_dir == run.merged and again.eos_token_ids == first.eos_token_ids
    assert {p.name: sha256_file(p) for p in run.merged.iterdir()} == before

    config.merge.verify_prompts = 2  # another recipe: merged again, verified on two prompts
    redone = merge_adapter(config, run)
    assert ALREADY_MERGED not in redone.notes and redone.prompts == 2


def test_agreement_measures_on_known_distributions():
    """medtune.verify's top-1 agreement and KL (nats per position), as merge, export and the benchmarks use them."""
    import math

    import numpy as np

    from medtune.verify import log_softmax, mean_kl, top1_agreement, top1_tokens

    p = log_softmax(np.log(np.array([[0.5, 0.5], [0.9, 0.1]], dtype=np.float64)))
    q = log_softmax(np.log(np.array([[0.25, 0.75], [0.9, 0.1]], dtype=np.float64)))
    assert mean_kl([p], [p]) == 0.0
    expected = (0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)) / 2  # the second position agrees exactly
    assert abs(mean_kl([p], [q]) - expected) < 1e-12
    assert top1_agreement(top1_tokens([p]), top1_tokens([q])) == 0.5  # [0.5, 0.5] picks token 0, q picks 1
    assert top1_agreement(top1_tokens([p, q]), top1_tokens([p, q])) == 1.0
