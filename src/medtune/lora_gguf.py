"""The LoRA adapter as a GGUF file (`export.adapter_gguf: true`), for runtimes that apply it at load time.

llama.cpp's `convert_lora_to_gguf.py` turns runs/<name>/adapter into gguf/adapter/<name>-lora-F16.gguf.
An adapter GGUF is applied to a base GGUF, so the base goes along as <name>-base-F16.gguf: the same
full-precision base the merge used (a GGUF base such as the embedded Q4_1 SmolLM2 is dequantized
first, see `medtune.modeling`), converted with the run's tokenizer and chat template, so base +
adapter is the merged model up to 16-bit rounding. Proof: llama.cpp loads the base file with the
adapter (llama-cpp-python's `lora_path`, i.e. `llama_adapter_lora_init`) and its next-token
predictions must agree with the merged 16-bit file's on the verification prompts
(`export.min_adapter_top1`). gguf/adapter/Modelfile builds the same model in Ollama with ADAPTER.
They live in a subfolder because gguf/*.gguf are the model files that eval scores.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medtune.config import RunConfig
from medtune.errors import ArtifactError

ADAPTER_FOLDER = "adapter"


@dataclass
class AdapterGGUF:
    """The adapter GGUF, its base, and how well base + adapter matches the merged 16-bit file."""

    folder: str  # relative to gguf/
    adapter_file: str
    adapter_size_bytes: int
    base_file: str
    base_size_bytes: int
    top1_vs_merged: float
    mean_kl_vs_merged: float
    positions: int
    modelfile: str | None
    seconds: float

    def figures(self) -> dict[str, Any]:
        return asdict(self)


def adapter_gguf_name(config: RunConfig) -> str:
    return f"{config.name}-lora-{config.export.outtype.upper()}.gguf"


def base_gguf_name(config: RunConfig) -> str:
    return f"{config.name}-base-{config.export.outtype.upper()}.gguf"


def export_adapter_gguf(
    config: RunConfig, gguf_tmp: Path, merged: Path, tokenizer, merged_logprobs: list[Any], prompts: list[list[int]],
    threads: int, modelfile_args: dict[str, Any] | None,
) -> AdapterGGUF:
    """Write gguf_tmp/adapter/{adapter, base, Modelfile} and verify base + adapter against the merged file.

    merged_logprobs: the merged 16-bit GGUF's log-softmax on `prompts` (export already has them).
    modelfile_args: keyword arguments for `ollama.build_modelfile` (None: no Modelfile).
    Raises ArtifactError when the agreement is below export.min_adapter_top1, ToolError when a
    llama.cpp converter fails.
    """
    import torch

    from medtune import llamacpp
    from medtune.export import _log_softmax, _mean_kl, _metadata, _staging_copy, _top1
    from medtune.merge import adapter_dir
    from medtune.modeling import load_base_model

    started = time.perf_counter()
    folder = gguf_tmp / ADAPTER_FOLDER
    folder.mkdir(exist_ok=True)
    out_type = config.export.outtype
    with tempfile.TemporaryDirectory(prefix="medtune-base-") as scratch:
        base_hf = Path(scratch) / "base"
        base = load_base_model(config.model, dtype=torch.float32)
        base.save_pretrained(base_hf)
        del base
        tokenizer.save_pretrained(base_hf)  # the run's tokenizer: same template and EOS as the merged files
        if (merged / "generation_config.json").is_file():
            shutil.copyfile(merged / "generation_config.json", base_hf / "generation_config.json")
        metadata = {**_metadata(config), "general.description": f"base model of the {config.name} LoRA adapter (medtune)"}
        with _staging_copy(base_hf, config) as staged:
            base_path = llamacpp.convert_to_gguf(staged, folder / base_gguf_name(config), out_type, metadata)
            adapter_path = llamacpp.convert_lora_to_gguf(adapter_dir(config), staged, folder / adapter_gguf_name(config), out_type)

    # llama.cpp applies the adapter itself: base weights x + scale * B(A x), scale = alpha / rank.
    llm = llamacpp.open_gguf(base_path, n_ctx=max(len(p) for p in prompts) + 8, logits_all=True, n_threads=threads,
                             lora_path=adapter_path)
    try:
        adapted = [_log_softmax(llamacpp.sequence_logits(llm, ids)) for ids in prompts]
    finally:
        llm.close()
    top1 = _top1([lp.argmax(-1) for lp in merged_logprobs], [lp.argmax(-1) for lp in adapted])
    kl = _mean_kl(merged_logprobs, adapted)
    positions = sum(len(p) for p in prompts)
    if top1 < config.export.min_adapter_top1:
        raise ArtifactError(
            f"{adapter_path.name} on {base_path.name} agrees with the merged {out_type.upper()} file on only {top1:.2%} of "
            f"{positions} next tokens (mean KL {kl:.4f}), below export.min_adapter_top1={config.export.min_adapter_top1:.0%}: "
            "llama.cpp does not apply this adapter as PEFT did (rsLoRA/DoRA or embedding adapters are not supported by its converter)"
        )
    modelfile = None
    if modelfile_args is not None:
        from medtune.artifacts import atomic_write_text
        from medtune.ollama import build_modelfile

        text = build_modelfile(tokenizer, base_path.name, adapter=adapter_path.name, **modelfile_args).text
        atomic_write_text(folder / "Modelfile", text)
        modelfile = f"{ADAPTER_FOLDER}/Modelfile"
    return AdapterGGUF(
        f"{ADAPTER_FOLDER}/", adapter_path.name, adapter_path.stat().st_size, base_path.name, base_path.stat().st_size,
        round(top1, 4), round(kl, 6), positions, modelfile, round(time.perf_counter() - started, 2),
    )
