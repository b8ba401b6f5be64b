"""Base model loading: local folders and the embedded GGUF, rebuilt without its quantization marker."""

from __future__ import annotations

import pytest
import torch

from medtune.config import ModelConfig
from medtune.errors import ModelError
from medtune.modeling import load_base_model


def test_local_folder_in_requested_dtype_and_attention(tiny_llama_dir):
    model = load_base_model(ModelConfig(base=str(tiny_llama_dir)), dtype=torch.bfloat16, attn_implementation="eager")
    assert model.dtype == torch.bfloat16
    assert model.config._attn_implementation == "eager"
    assert getattr(model.config, "quantization_config", None) is None


def test_missing_model_is_a_model_error(tmp_path):
    with pytest.raises(ModelError):
        load_base_model(ModelConfig(base=str(tmp_path / "nothing.gguf")))


@pytest.mark.slow
def test_embedded_gguf_gives_a_clean_saveable_model(tmp_path):
    """transformers' GGUF load refuses save_pretrained and carries quantization_config; ours does neither."""
    from transformers import AutoModelForCausalLM

    model = load_base_model(ModelConfig())
    assert getattr(model.config, "quantization_config", None) is None
    assert getattr(model, "hf_quantizer", None) is None
    assert model.dtype == torch.float32
    model.save_pretrained(tmp_path)
    assert "quantization_config" not in (tmp_path / "config.json").read_text()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = torch.tensor([[1, 520, 2156, 314, 253, 3365, 30]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits)
    # tied embeddings survive the rebuild
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
