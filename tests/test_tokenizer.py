"""Tokenizer loading and fix-ups: pad != EOS, chat template present, model source resolution."""

from __future__ import annotations

import copy

import pytest

from medtune.config import EMBEDDED_MODEL, ModelConfig
from medtune.errors import ModelError
from medtune.tokenizer import end_of_turn_token, fix_pad_token, load_tokenizer, resolve_model_source


def test_pad_token_is_a_reserved_token_never_eos():
    from conftest import load_smollm2_tokenizer, make_llama3_style_tokenizer

    # Fresh tokenizers, not copies of the session fixtures: other tests set pad tokens on those.
    smol = load_smollm2_tokenizer()
    assert smol.pad_token == smol.eos_token == "<|im_end|>"  # as shipped: the bug
    assert fix_pad_token(smol) == "<|endoftext|>"
    assert smol.pad_token_id != smol.eos_token_id
    llama = make_llama3_style_tokenizer()
    assert fix_pad_token(llama) == "<|finetune_right_pad_id|>"
    assert llama.pad_token_id not in (llama.eos_token_id, llama.convert_tokens_to_ids("<|eot_id|>"))


def test_requested_pad_token_must_exist_and_differ_from_eos(smollm2_tokenizer):
    tok = copy.deepcopy(smollm2_tokenizer)
    with pytest.raises(ModelError, match="is the EOS token"):
        fix_pad_token(tok, "<|im_end|>")
    with pytest.raises(ModelError, match="not in the vocabulary"):
        fix_pad_token(tok, "<|no_such_token|>")
    assert fix_pad_token(tok, "<file_sep>") == "<file_sep>"


def test_end_of_turn_tokens(smollm2_tokenizer, llama3_tokenizer):
    assert end_of_turn_token(smollm2_tokenizer) == "<|im_end|>"
    assert end_of_turn_token(llama3_tokenizer) == "<|eot_id|>"


def test_template_without_end_of_turn_token_is_rejected(smollm2_tokenizer):
    tok = copy.deepcopy(smollm2_tokenizer)
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(ModelError, match="no special end-of-turn token"):
        end_of_turn_token(tok)


def test_load_tokenizer_from_a_model_folder(tiny_llama_dir, tiny_llama3_rope_dir):
    smol = load_tokenizer(ModelConfig(base=str(tiny_llama_dir)))
    assert smol.pad_token == "<|endoftext|>" and smol.padding_side == "right"
    llama = load_tokenizer(ModelConfig(base=str(tiny_llama3_rope_dir)))
    assert llama.pad_token == "<|finetune_right_pad_id|>" != llama.eos_token


def test_chat_template_override_and_missing_template(tmp_path, tiny_llama_dir):
    template = tmp_path / "t.jinja"
    template.write_text(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tok = load_tokenizer(ModelConfig(base=str(tiny_llama_dir), chat_template=str(template)))
    assert tok.chat_template == template.read_text()
    with pytest.raises(ModelError, match="does not exist"):
        load_tokenizer(ModelConfig(base=str(tiny_llama_dir), chat_template=str(tmp_path / "none.jinja")))


def test_resolve_model_source(tmp_path, tiny_llama_dir):
    embedded = resolve_model_source(EMBEDDED_MODEL)
    assert embedded.kind == "gguf" and embedded.gguf_file.endswith(".gguf")
    assert resolve_model_source(str(tiny_llama_dir)).kind == "local"
    hub = resolve_model_source("meta-llama/Llama-3.2-1B-Instruct")
    assert (hub.kind, hub.path, hub.gguf_file) == ("hub", "meta-llama/Llama-3.2-1B-Instruct", None)
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model_source(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model_source(str(tmp_path))
    with pytest.raises(ModelError, match="neither"):
        resolve_model_source("./not/a/model")
