"""Shared fixtures: the real SmolLM2 tokenizer (ChatML), a Llama-3-style tokenizer, and tiny random
Llama models saved as Hugging Face folders. Nothing here touches the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PUBMEDQA_DIR = SHARED / "data" / "pubmedqa"

# Llama 3's chat format (header tokens, <|eot_id|> after every turn), without the date preamble.
LLAMA3_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|finetune_right_pad_id|>"]


def load_smollm2_tokenizer():
    from transformers import AutoTokenizer

    from medtune.embedded import smollm2_gguf_path

    gguf = smollm2_gguf_path()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def make_llama3_style_tokenizer():
    """SmolLM2's BPE vocabulary with Llama 3's special tokens and chat template."""
    tokenizer = load_smollm2_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": LLAMA3_SPECIAL})
    tokenizer.bos_token = "<|begin_of_text|>"
    tokenizer.eos_token = "<|eot_id|>"
    tokenizer.pad_token = "<|eot_id|>"  # as shipped by many Llama 3 recipes: the bug medtune fixes
    tokenizer.chat_template = LLAMA3_TEMPLATE
    return tokenizer


def make_tiny_llama(tokenizer, out_dir: Path, *, llama3_rope: bool = False, seed: int = 0) -> Path:
    """Save a tiny random LlamaForCausalLM (tied embeddings) plus `tokenizer` as an HF folder."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    rope = {"rope_type": "default", "rope_theta": 10000.0}
    if llama3_rope:
        rope = {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 1024,
        }
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        rope_parameters=rope,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    return load_smollm2_tokenizer()


@pytest.fixture(scope="session")
def llama3_tokenizer():
    return make_llama3_style_tokenizer()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smollm2_tokenizer) -> Path:
    """Tiny random Llama with SmolLM2's real tokenizer and ChatML template."""
    return make_tiny_llama(smollm2_tokenizer, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_llama3_rope_dir(tmp_path_factory, llama3_tokenizer) -> Path:
    """Tiny random Llama with llama3 rope scaling and a Llama-3-style tokenizer."""
    return make_tiny_llama(llama3_tokenizer, tmp_path_factory.mktemp("tiny-llama3"), llama3_rope=True)
