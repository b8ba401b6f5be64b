"""Quantization with an importance matrix and the quality table, on a tiny Llama whose hidden size
(256) lets the K- and IQ-quants apply: the imatrix is computed on the train split and used (its
name is in every quant's metadata), every low-bit type is made and measured with llama.cpp's
llama-perplexity on the val split with and without it, and a quant above its bar fails the stage
with the figure while the previous gguf/ folder stays as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_merge import make_adapter_run

from medtune import llamacpp
from medtune.artifacts import read_manifest, sha256_file
from medtune.errors import ArtifactError, ConfigError
from medtune.export import QualityBarError, prepare_imatrix, split_text
from medtune.pipeline import run_stage
from medtune.rundir import RunDir

needs_tools = pytest.mark.skipif(
    not llamacpp.runtime_available() or not (llamacpp.converter_dir() / llamacpp.CONVERTER).is_file()
    or not llamacpp.tools_available(),
    reason=f"llama.cpp runtime/converter/tools not installed: {llamacpp.SETUP_HINT} (CI does)",
)
LOW_BIT = ["Q8_0", "Q4_K_M", "IQ4_XS", "Q3_K_M", "IQ3_M", "Q2_K"]
# Small chunks: the tiny run's splits are a few thousand tokens.
SMALL = {"quality_ctx": 128, "quality_chunks": 6, "imatrix_ctx": 128, "imatrix_chunks": 8, "answer_max_tokens": 16,
         "require_eos_stop": False, "min_f16_top1": 0.97, "verify_prompts": 2}


def make_tiny_llama_256(tokenizer, out_dir: Path, *, seed: int = 0) -> Path:
    """A tiny random Llama (hidden 256, 2 layers) saved in bf16, with `tokenizer`."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)


def write_medical_splits(config, tokenizer, *, n_train: int = 30, n_val: int = 10) -> None:
    """data/train and data/val as the prepare stage leaves them (columns messages, length), from
    medtune's shipped ReasonMed-style sample: disjoint records, enough text for a few chunks."""
    import datasets

    from medtune.data.loading import builtin_path

    lines = builtin_path("builtin:reasonmed-sample").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    conversations = [[{"role": "user", "content": r["instruction"] + ("\n\n" + r["input"] if r.get("input") else "")},
                      {"role": "assistant", "content": r["output"]}] for r in records]
    splits = {"train": conversations[:n_train], "val": conversations[n_train:n_train + n_val]}
    for split, chats in splits.items():
        folder = RunDir.of(config).split(split)
        shutil.rmtree(folder, ignore_errors=True)
        lengths = [len(tokenizer.apply_chat_template(c, tokenize=True)) for c in chats]
        datasets.Dataset.from_dict({"messages": [json.dumps(c) for c in chats], "length": lengths}).save_to_disk(str(folder))


@pytest.fixture(scope="module")
def tiny_256_dir(tmp_path_factory, smollm2_tokenizer) -> Path:
    return make_tiny_llama_256(smollm2_tokenizer, tmp_path_factory.mktemp("tiny-256"))


def _run(tmp_path, base_dir, name, **export):
    from transformers import AutoTokenizer

    config = make_adapter_run(tmp_path, base_dir, name=name, export={**SMALL, **export})
    write_medical_splits(config, AutoTokenizer.from_pretrained(str(base_dir)))
    return config


def _gguf_field(path, key):
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get(key)
    return None if field is None else field.contents()


@pytest.mark.slow
@needs_tools
def test_imatrix_on_the_train_split_and_every_low_bit_type_measured_with_and_without(tmp_path, tiny_256_dir):
    config = _run(tmp_path, tiny_256_dir, "iq", quant_types=[*LOW_BIT, "IQ2_XS"])
    run = RunDir.of(config)
    run_stage(config, "merge")
    result = run_stage(config, "export").result
    folder = run.gguf

    # The imatrix: computed on the train split, shipped, and named in every quant's metadata.
    assert result.imatrix["source"] == "the train split (30 records)" and result.imatrix["chunks"] >= 2
    imatrix = run.imatrix
    assert imatrix.name == "iq.imatrix"
    assert imatrix.is_file() and _gguf_field(imatrix, "general.type") == "imatrix"
    assert not list(folder.glob(".scratch*")) and not (folder / ".calibration.txt").exists()
    for type_name in [*LOW_BIT, "IQ2_XS"]:
        path = folder / f"iq-{type_name}.gguf"
        # Bare names, no temp folder: the same run exports byte-identical files (tests/test_run_e2e.py).
        assert _gguf_field(path, "quantize.imatrix.file") == "iq.imatrix", type_name
        assert _gguf_field(path, "quantize.imatrix.dataset") == ".calibration.txt", type_name
    assert sorted(p.name for p in folder.glob("*.gguf")) == sorted(f"iq-{t}.gguf" for t in ["F16", *LOW_BIT, "IQ2_XS"])

    # The table: the 16-bit reference, then each type with the imatrix (shipped) and without (not);
    # IQ2_XS has no row without, since llama.cpp refuses to make it without an imatrix.
    quality = result.quality
    assert quality["corpus"] == "the val split (10 held-out records)" and quality["ctx"] == 128
    assert quality["chunks"] >= 2 and quality["positions"] == quality["chunks"] * (128 - 1 - 64)
    rows = {(r["type"], r["imatrix"]): r for r in quality["rows"]}
    assert set(rows) == {("F16", False), *((t, True) for t in [*LOW_BIT, "IQ2_XS"]), *((t, False) for t in LOW_BIT)}
    reference = rows[("F16", False)]
    assert reference["mean_kl"] is None and 15.9 < reference["bits_per_weight"] < 16.1 and reference["perplexity"] > 1
    for (type_name, with_imatrix), row in rows.items():
        if type_name == "F16":
            continue
        assert row["shipped"] == with_imatrix
        assert 0 <= row["mean_kl"] <= row["p99_kl"] and 0 < row["top1_agreement"] <= 1 and row["perplexity"] > 1
        assert row["bits_per_weight"] < reference["bits_per_weight"] and row["size_bytes"] < reference["size_bytes"]
    shipped = {t: rows[(t, True)] for t in [*LOW_BIT, "IQ2_XS"]}
    assert shipped["Q8_0"]["bits_per_weight"] > shipped["Q4_K_M"]["bits_per_weight"] > shipped["Q2_K"]["bits_per_weight"]
    assert shipped["Q8_0"]["mean_kl"] < shipped["Q2_K"]["mean_kl"] and shipped["Q8_0"]["mean_kl"] <= 0.01

    # The same figures in verification.json and the manifest, and the model card's table.
    saved = json.loads((folder / "verification.json").read_text())
    assert saved["quality"] == quality and saved["quants"]["Q4_K_M"]["heldout_mean_kl"] == shipped["Q4_K_M"]["mean_kl"]
    from medtune.model_card import write_model_card

    entry = read_manifest(run.root)["stages"]["export"]
    assert entry["quality"]["rows"] == quality["rows"] and any(o["path"] == "gguf/iq.imatrix" for o in entry["outputs"])
    write_model_card(config, run)
    card = run.model_card.read_text()
    assert "Quality on held-out medical text: the val split (10 held-out records)" in card
    assert "| Q4_K_M | no (not shipped) |" in card and "| IQ2_XS | yes |" in card


@pytest.mark.slow
@needs_tools
def test_an_imatrix_file_is_used_and_a_quant_above_its_bar_fails_keeping_the_previous_files(tmp_path, tiny_256_dir):
    """export.imatrix: PATH (made on other calibration text) is copied in and used; then an export whose
    Q2_K is above its bar fails with the figure, and gguf/ keeps the files of the first export."""
    config = _run(tmp_path, tiny_256_dir, "bar", quant_types=["Q3_K_M"], compare_without_imatrix=False)
    run = RunDir.of(config)
    run_stage(config, "merge")
    f16 = llamacpp.convert_to_gguf(run.merged, tmp_path / "ref-F16.gguf", "f16")
    text = tmp_path / "calibration.txt"
    text.write_text("The kidney filters the blood and regulates electrolytes. " * 300)
    made = llamacpp.compute_imatrix(f16, text, tmp_path / "other.imatrix", ctx=128, chunks=4, n_threads=2)
    assert made["chunks"] == 4
    config.export.imatrix = str(tmp_path / "other.imatrix")
    result = run_stage(config, "export").result
    folder = run.gguf
    assert result.imatrix["source"] == f"file {tmp_path / 'other.imatrix'}" and result.imatrix["chunks"] is None
    assert (folder / "bar.imatrix").read_bytes() == (tmp_path / "other.imatrix").read_bytes()
    assert _gguf_field(folder / "bar-Q3_K_M.gguf", "quantize.imatrix.chunks_count") == 4
    assert [(r["type"], r["imatrix"]) for r in result.quality["rows"]] == [("F16", False), ("Q3_K_M", True)]
    before = {p.name: sha256_file(p) for p in folder.iterdir() if p.is_file()}

    config.export.imatrix = "off"
    config.export.quant_types = ["Q3_K_M", "Q2_K"]
    config.export.max_mean_kl = {"Q3_K_M": 0.5, "Q2_K": 1e-6}
    with pytest.raises(QualityBarError) as failure:
        run_stage(config, "export")
    message = str(failure.value)
    # The pipeline records the failed attempt with the figures that failed it.
    entry = read_manifest(run.root)["stages"]["export"]
    q2k = next(r for r in entry["quality"]["rows"] if r["type"] == "Q2_K")
    assert entry["status"] == "failed" and entry["error"] == message and entry["imatrix"] is None
    assert f"bar-Q2_K.gguf (without an importance matrix): mean KL divergence from F16 is {q2k['mean_kl']:.4f}" in message
    assert "above the bar export.max_mean_kl.Q2_K=1e-06" in message and "Q3_K_M" not in message.split("Not shipped")[0]
    assert {p.name: sha256_file(p) for p in folder.iterdir() if p.is_file()} == before  # nothing of the failed attempt
    assert not list(run.root.glob("gguf.tmp-*"))


# ---- configuration (fast) -----------------------------------------------------------------------


def _export_config(**export):
    from medtune.config import RunConfig

    return RunConfig.model_validate({"name": "x", "data": {"files": ["a.jsonl"]}, "export": export}).export


def test_types_that_need_an_imatrix_are_refused_when_it_is_off(tmp_path):
    from medtune.config import load_config

    assert _export_config(quant_types=["IQ2_XS", "iq3_m"]).quant_types == ["IQ2_XS", "IQ3_M"]  # imatrix auto
    path = tmp_path / "run.yaml"
    path.write_text("name: x\ndata: {files: [a.jsonl]}\nexport: {imatrix: off, quant_types: [Q4_K_M, IQ2_XS]}\n")
    with pytest.raises(ConfigError, match=r"IQ2_XS need an importance matrix, and export.imatrix is off"):
        load_config(path)
    # The low-bit types llama.cpp makes without one are allowed either way (they are only worse).
    assert load_config(path, ["export.quant_types=[IQ4_XS,IQ3_M,Q3_K_M,Q2_K]"]).export.imatrix == "off"


def test_imatrix_setting_and_bars_are_checked(tmp_path):
    assert _export_config(imatrix="OFF").imatrix == "off"
    with pytest.raises(Exception, match="neither auto, off, nor an existing imatrix file"):
        _export_config(imatrix=str(tmp_path / "missing.imatrix"))
    given = tmp_path / "m.imatrix"
    given.write_bytes(b"x")
    assert _export_config(imatrix=str(given)).imatrix == str(given)
    assert _export_config(max_mean_kl={"q4_k": 0.2}).max_mean_kl == {"Q4_K_M": 0.2}
    with pytest.raises(Exception, match="not a llama.cpp quantization type"):
        _export_config(max_mean_kl={"Q9_9": 0.1})
    with pytest.raises(Exception, match="positive KL divergence"):
        _export_config(max_mean_kl={"Q8_0": 0})
    assert _export_config().max_mean_kl == {"Q8_0": 0.01, "Q4_K_M": 0.1}


def test_auto_computes_no_imatrix_for_types_that_ignore_one(tmp_path):
    from medtune.config import RunConfig

    config = RunConfig.model_validate({"name": "x", "output_dir": str(tmp_path), "data": {"files": ["a.jsonl"]},
                                       "export": {"quant_types": ["q8_0"]}})
    # Nothing is read or run: no F16 file, no train split, no tokenizer are needed to decide.
    info, note = prepare_imatrix(config, RunDir.of(config), tmp_path / "missing-F16.gguf", tmp_path, None, 1)
    assert info is None and "Q8_0 ignore one" in note
    assert not list(tmp_path.iterdir())
    # With a type the matrix changes, auto goes on to look for the train split (absent here: it says so).
    config = RunConfig.model_validate({"name": "x", "output_dir": str(tmp_path), "data": {"files": ["a.jsonl"]},
                                       "export": {"quant_types": ["Q8_0", "Q4_K_M"]}})
    info, note = prepare_imatrix(config, RunDir.of(config), tmp_path / "missing-F16.gguf", tmp_path, None, 1)
    assert info is None and note.startswith("no train split")


def test_split_text_is_the_conversations_without_system_prompts(tmp_path):
    import datasets

    chats = [[{"role": "system", "content": "Be careful."}, {"role": "user", "content": "Q1?"}, {"role": "assistant", "content": "A1."}],
             [{"role": "user", "content": "Q2?"}, {"role": "assistant", "content": "A2."}]]
    datasets.Dataset.from_dict({"messages": [json.dumps(c) for c in chats], "length": [50, 40]}).save_to_disk(str(tmp_path / "s"))
    assert split_text(tmp_path / "s").text == "Q1?\n\nA1.\n\nQ2?\n\nA2.\n"
    assert split_text(tmp_path / "s", max_tokens=50).records == 1
    with pytest.raises(ArtifactError, match="medtune prepare"):
        split_text(tmp_path / "missing")
