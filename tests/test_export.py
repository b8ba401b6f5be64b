"""Export: tiny random Llamas (tied embeddings; llama3 rope scaling) with real tokenizers go through
merge -> convert -> imatrix -> quantize -> load -> logit agreement -> quality table; the embedded
SmolLM2 (loaded by transformers from a GGUF) goes through the same path, must answer the seed question
and stop, and its LoRA adapter as GGUF on the dequantized base must match the merged file; the Ollama
Modelfile is derived from each chat template. (Low-bit types, imatrix and bars: test_quant_quality.py.)"""

from __future__ import annotations

import json

import pytest
from test_merge import make_adapter_run
from test_quant_quality import SMALL, write_medical_splits

from medtune import llamacpp
from medtune.artifacts import read_manifest
from medtune.errors import ArtifactError
from medtune.export import export_gguf, gguf_weight_type, quantized_base_note, staged_model_folder
from medtune.export.modelfile import build_modelfile, derive_pieces
from medtune.pipeline import run_stage
from medtune.rundir import RunDir

needs_llama_cpp = pytest.mark.skipif(
    not llamacpp.runtime_available() or not (llamacpp.converter_dir() / llamacpp.CONVERTER).is_file()
    or not llamacpp.tools_available(),
    reason=f"llama.cpp runtime/converter/tools not installed: {llamacpp.SETUP_HINT} (CI does)",
)


def _read_fields(path, *keys):
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    return {key: (reader.fields[key].contents() if key in reader.fields else None) for key in keys}


def _export_tiny(tmp_path, base_dir, name, *, full: bool):
    from transformers import AutoTokenizer

    # Random tiny models have near-tied logits (16-bit rounding flips a few) and never say EOS.
    # full: also the imatrix and the adapter GGUF (one variant is enough for those; CI time).
    export = {**SMALL, "quant_types": ["Q4_K_M", "Q8_0"], "verify_prompts": 8, "adapter_gguf": full,
              "imatrix": "auto" if full else "off"}
    config = make_adapter_run(tmp_path, base_dir, name=name, export=export)
    write_medical_splits(config, AutoTokenizer.from_pretrained(str(base_dir)))
    run_stage(config, "merge")
    return config, run_stage(config, "export").result


@pytest.mark.slow
@needs_llama_cpp
@pytest.mark.parametrize("variant", ["tied", "llama3_rope"])
def test_tiny_llama_merge_convert_quantize_verify(tmp_path, variant, request):
    base_dir = request.getfixturevalue("tiny_llama_dir" if variant == "tied" else "tiny_llama3_rope_dir")
    config, result = _export_tiny(tmp_path, base_dir, f"tiny-{variant}", full=variant == "tied")
    run = RunDir.of(config)
    folder = run.gguf
    names = sorted(p.name for p in folder.glob("*.gguf"))
    assert names == sorted(f"tiny-{variant}-{t}.gguf" for t in ("F16", "Q4_K_M", "Q8_0"))
    f16, q4, q8 = result.files
    assert (f16.type, q4.type, q8.type) == ("F16", "Q4_K_M", "Q8_0")
    assert f16.top1_agreement >= 0.97 and f16.mean_kl is None and 15.9 < f16.bits_per_weight < 16.1
    assert q8.top1_agreement >= 0.9 and q8.mean_kl is not None and q8.size_bytes < f16.size_bytes
    assert q4.size_bytes <= q8.size_bytes
    eot = "<|im_end|>" if variant == "tied" else "<|eot_id|>"
    assert result.metadata["end_of_turn"] == eot and result.metadata["chat_prompt_matches_hf"]
    assert result.metadata["leading_bos"] <= 1
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(run.merged))
    for name in names:
        fields = _read_fields(folder / name, "general.name", "tokenizer.ggml.eos_token_id", "tokenizer.chat_template", "general.license")
        assert fields["general.name"] == config.name
        assert fields["tokenizer.ggml.eos_token_id"] == tokenizer.convert_tokens_to_ids(eot)
        assert fields["tokenizer.chat_template"] == tokenizer.chat_template
        assert fields["general.license"] == "apache-2.0"
    modelfile = (folder / "Modelfile").read_text()
    assert f"FROM ./tiny-{variant}-Q4_K_M.gguf" in modelfile and 'TEMPLATE """' in modelfile
    assert f'PARAMETER stop "{eot}"' in modelfile
    saved = json.loads((folder / "verification.json").read_text())
    assert set(saved["quants"]) == {"Q4_K_M", "Q8_0"}
    entry = read_manifest(run.root)["stages"]["export"]
    assert entry["status"] == "done" and entry["f16_top1_agreement"] == f16.top1_agreement
    assert {"top1_agreement", "mean_kl", "size_bytes", "heldout_mean_kl", "heldout_p99_kl"} <= set(entry["quants"]["Q8_0"])
    rows = [(r["type"], r["imatrix"], r["shipped"]) for r in result.quality["rows"]]
    if variant != "tied":
        assert rows == [("F16", False, True), ("Q4_K_M", False, True), ("Q8_0", False, True)]  # imatrix: off
        assert result.adapter is None and not (folder / "adapter").exists()
        return
    assert (folder / f"tiny-{variant}.imatrix").is_file() and rows[1:3] == [("Q4_K_M", True, True), ("Q4_K_M", False, False)]

    # The LoRA adapter as GGUF, on the base converted alongside it, matches the merged 16-bit file.
    adapter = result.adapter
    assert adapter["adapter_file"] == f"tiny-{variant}-lora-F16.gguf" and adapter["base_file"] == f"tiny-{variant}-base-F16.gguf"
    assert adapter["top1_vs_merged"] >= 0.99 and saved["adapter_top1_vs_merged"] == adapter["top1_vs_merged"]
    lora = folder / "adapter" / adapter["adapter_file"]
    fields = _read_fields(lora, "general.type", "adapter.type", "adapter.lora.alpha")
    assert fields == {"general.type": "adapter", "adapter.type": "lora", "adapter.lora.alpha": 16.0}
    adapter_modelfile = (folder / "adapter" / "Modelfile").read_text()
    assert f"FROM ./tiny-{variant}-base-F16.gguf\nADAPTER ./tiny-{variant}-lora-F16.gguf\n" in adapter_modelfile
    assert f'PARAMETER stop "{eot}"' in adapter_modelfile


@pytest.mark.slow
@needs_llama_cpp
def test_embedded_smollm2_from_gguf_exports_and_stops(tmp_path):
    """The default model: transformers loads SmolLM2 from a GGUF (quantization-marked), medtune
    merges an adapter into it, llama.cpp converts it back, and every file answers the seed question
    and stops by itself; the 16-bit file agrees with transformers on >= 99% of next tokens."""
    import torch

    from medtune.config import ModelConfig
    from medtune.modeling import load_base_model
    from medtune.tokenizer import load_tokenizer

    base_dir = tmp_path / "smollm2"
    model_config = ModelConfig()
    load_base_model(model_config, dtype=torch.float32).save_pretrained(base_dir)
    tokenizer = load_tokenizer(model_config)
    tokenizer.save_pretrained(base_dir)
    config = make_adapter_run(tmp_path, base_dir, name="smol", tokenizer=tokenizer, base="embedded:smollm2-135m-instruct",
                              export={"quant_types": ["Q8_0"], "quality_ctx": 256, "quality_chunks": 4, "imatrix": "off",
                                      "adapter_gguf": True})
    write_medical_splits(config, tokenizer)
    # A tiny adapter: the fine-tuned model must still be the chat model that knows when to stop.
    from safetensors.torch import load_file, save_file

    run = RunDir.of(config)
    weights_path = run.adapter / "adapter_model.safetensors"
    weights = {k: (v * 0.01 if "lora_B" in k else v) for k, v in load_file(str(weights_path)).items()}
    save_file(weights, str(weights_path))

    merged = run_stage(config, "merge").result
    assert merged.top1_agreement == 1.0
    assert "quantization_config" not in json.loads((run.merged / "config.json").read_text())
    result = run_stage(config, "export").result
    assert result.f16_top1_agreement >= 0.99
    assert all(f.stopped_on_eos and f.answer for f in result.files)
    assert result.metadata["license"] == "apache-2.0"
    # The embedded base is a Q4_1 GGUF, but Q8_0's grid is fine enough: no note about rounding twice.
    assert not any("rounded to Q4_1" in note for note in result.notes)
    q8 = result.quality["rows"][1]
    assert (q8["type"], q8["imatrix"]) == ("Q8_0", False) and q8["mean_kl"] <= 0.01  # the default bar, on real text
    # The adapter GGUF on the dequantized Q4_1 base (converted to F16) is the merged model.
    assert result.adapter["top1_vs_merged"] >= 0.99


def test_gguf_weight_type_and_the_second_rounding_note(tmp_path):
    from medtune.config import RunConfig
    from medtune.embedded import smollm2_gguf_path

    assert gguf_weight_type(smollm2_gguf_path()) == "Q4_1"
    config = RunConfig.model_validate({"name": "x", "data": {"files": ["a.jsonl"]}})  # embedded base
    note = quantized_base_note(config, ["Q4_K_M", "Q5_K_M", "Q8_0"])
    assert note.startswith("the base model is a Q4_1 GGUF") and "Q4_K_M, Q5_K_M round them" in note
    assert "Q8_0" not in note and quantized_base_note(config, ["Q4_1", "Q8_0"]) is None
    (tmp_path / "broken.gguf").write_bytes(b"not a gguf")
    assert gguf_weight_type(tmp_path / "broken.gguf") is None


@needs_llama_cpp
def test_export_without_merged_model_says_what_to_run(tmp_path):
    from medtune.config import RunConfig

    config = RunConfig.model_validate({"name": "x", "output_dir": str(tmp_path), "data": {"files": ["a.jsonl"]}})
    with pytest.raises(ArtifactError, match="medtune merge"):
        export_gguf(config, RunDir.of(config))


def test_staging_copy_drops_quantization_config_and_adds_card(tmp_path):
    from medtune.config import RunConfig

    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": {"quant_method": "gguf"}}))
    (merged / "model.safetensors").write_bytes(b"x")
    config = RunConfig.model_validate(
        {"name": "demo", "output_dir": str(tmp_path), "data": {"files": ["a.jsonl"]}, "model": {"license": "apache-2.0"}}
    )
    with staged_model_folder(merged, config) as staged:
        assert "quantization_config" not in json.loads((staged / "config.json").read_text())
        assert (staged / "model.safetensors").read_bytes() == b"x"
        card = (staged / "README.md").read_text()
        assert "license: apache-2.0" in card and "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
        assert staged.name == "demo"  # the converter's general.basename: the run, not a temporary name
    assert not staged.exists()  # the view is gone
    assert "quantization_config" in (merged / "config.json").read_text()  # the merged folder is untouched


# ---- Ollama Modelfile ---------------------------------------------------------------------------


def test_modelfile_from_chatml_template(smollm2_tokenizer):
    pieces = derive_pieces(smollm2_tokenizer)
    assert pieces.bos == ""  # ChatML's <|im_start|> is a turn marker, not a BOS
    assert pieces.user_prefix == "<|im_start|>user\n" and pieces.assistant_suffix == "<|im_end|>\n"
    assert pieces.default_system.startswith("You are a helpful AI assistant named SmolLM")
    modelfile = build_modelfile(smollm2_tokenizer, "m-Q4_K_M.gguf", end_of_turn="<|im_end|>", runtime_adds_bos=False)
    assert modelfile.template.startswith("derived")
    assert 'PARAMETER stop "<|im_end|>"' in modelfile.text and "SYSTEM" in modelfile.text
    assert modelfile.text.splitlines()[1] == "FROM ./m-Q4_K_M.gguf"


def test_modelfile_llama3_bos_only_when_the_runtime_does_not_add_it(llama3_tokenizer):
    pieces = derive_pieces(llama3_tokenizer)
    assert pieces.bos == "<|begin_of_text|>" and pieces.default_system is None
    with_bos = build_modelfile(llama3_tokenizer, "m.gguf", end_of_turn="<|eot_id|>", runtime_adds_bos=False).text
    without = build_modelfile(llama3_tokenizer, "m.gguf", end_of_turn="<|eot_id|>", runtime_adds_bos=True).text
    assert 'TEMPLATE """<|begin_of_text|>' in with_bos
    assert "<|begin_of_text|>" not in without  # the runtime adds it: writing it too would double it
    assert 'PARAMETER stop "<|eot_id|>"' in without


def test_modelfile_omits_template_it_cannot_derive(smollm2_tokenizer):
    import copy

    odd = copy.deepcopy(smollm2_tokenizer)
    odd.chat_template = "{{ messages[-1]['content'] }}"  # only the last message: not per-role
    modelfile = build_modelfile(odd, "m.gguf", end_of_turn="<|im_end|>", runtime_adds_bos=False)
    assert "TEMPLATE" not in modelfile.text and modelfile.template.startswith("omitted")
    assert 'PARAMETER stop "<|im_end|>"' in modelfile.text


_GO_RENDERER = """package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

func main() {
	src, _ := os.ReadFile(os.Args[1])
	var msgs []Message
	json.NewDecoder(os.Stdin).Decode(&msgs)
	t := template.Must(template.New("m").Parse(string(src)))
	if err := t.Execute(os.Stdout, map[string]interface{}{"Messages": msgs}); err != nil {
		panic(err)
	}
}
"""


@pytest.mark.slow
@pytest.mark.skipif(__import__("shutil").which("go") is None, reason="Go toolchain not installed (optional check)")
@pytest.mark.parametrize("fixture", ["smollm2_tokenizer", "llama3_tokenizer"])
def test_modelfile_template_renders_like_jinja_in_go(tmp_path, fixture, request):
    """Ollama renders TEMPLATE with Go's text/template: run the real thing on the derived template."""
    import re
    import subprocess

    tokenizer = request.getfixturevalue(fixture)
    (tmp_path / "main.go").write_text(_GO_RENDERER)
    (tmp_path / "go.mod").write_text("module gotpl\ngo 1.19\n")
    subprocess.run(["go", "build", "-o", "render", "."], cwd=tmp_path, check=True, env={**__import__("os").environ, "GOCACHE": str(tmp_path / "cache")})
    text = build_modelfile(tokenizer, "m.gguf", end_of_turn=tokenizer.eos_token, runtime_adds_bos=False).text
    (tmp_path / "t.tmpl").write_text(re.search(r'TEMPLATE """(.*?)"""', text, re.S).group(1))
    system = re.search(r'SYSTEM """(.*?)"""', text, re.S)
    for conversation in (
        [{"role": "user", "content": "What causes scurvy?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What causes scurvy?"},
         {"role": "assistant", "content": "Vitamin C deficiency."}, {"role": "user", "content": "And rickets?"}],
    ):
        sent = conversation
        if system and conversation[0]["role"] != "system":  # Ollama sends SYSTEM as the first message
            sent = [{"role": "system", "content": system.group(1)}, *conversation]
        rendered = subprocess.run([str(tmp_path / "render"), str(tmp_path / "t.tmpl")], input=json.dumps(sent),
                                  capture_output=True, text=True, check=True).stdout
        assert rendered == tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
