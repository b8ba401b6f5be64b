"""The LoRA adapter as a GGUF file (`export.adapter_gguf: true`), for runtimes that apply it at load time.

llama.cpp's `convert_lora_to_gguf.py` turns the adapter the merged model was made of (the run's
adapter/, or rl-adapter/ after an RL stage) into gguf/adapter/<name>-lora-F16.gguf.
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

from medtune import llamacpp
from medtune.artifacts import atomic_write_text
from medtune.config import RunConfig
from medtune.errors import ArtifactError
from medtune.export.modelfile import build_modelfile
from medtune.export.staging import gguf_metadata, staged_model_folder
from medtune.modeling import load_base_model, merged_adapter
from medtune.rundir import RunDir
from medtune.verify import gguf_logprobs, mean_kl, top1_agreement, top1_tokens


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


def export_adapter_gguf(
    config: RunConfig, run: RunDir, gguf_tmp: Path, tokenizer, merged_logprobs: list[Any], prompts: list[list[int]],
    threads: int, modelfile_args: dict[str, Any] | None,
) -> AdapterGGUF:
    """Write the adapter GGUF, its base and (modelfile_args given) their Modelfile into `gguf_tmp`
    (the gguf/ folder being written, laid out as run.adapter_gguf_folder) and verify base + adapter
    against the merged 16-bit file.

    merged_logprobs: the merged 16-bit GGUF's log-softmax on `prompts` (export already has them).
    modelfile_args: keyword arguments for `build_modelfile` (None: no Modelfile).
    Raises ArtifactError when the agreement is below export.min_adapter_top1, ToolError when a
    llama.cpp converter fails.
    """
    started = time.perf_counter()
    out_type = config.export.outtype
    folder = gguf_tmp / run.adapter_gguf_folder.relative_to(run.gguf)
    folder.mkdir(exist_ok=True)
    base_path, adapter_path = _convert_base_and_adapter(config, run, folder, tokenizer, out_type)
    # llama.cpp applies the adapter itself: base weights x + scale * B(A x), scale = alpha / rank.
    adapted = gguf_logprobs(base_path, prompts, threads, lora_path=adapter_path)
    top1 = top1_agreement(top1_tokens(merged_logprobs), top1_tokens(adapted))
    kl = mean_kl(merged_logprobs, adapted)
    positions = sum(len(p) for p in prompts)
    if top1 < config.export.min_adapter_top1:
        raise ArtifactError(
            f"{adapter_path.name} on {base_path.name} agrees with the merged {out_type.upper()} file on only {top1:.2%} of "
            f"{positions} next tokens (mean KL {kl:.4f}), below export.min_adapter_top1={config.export.min_adapter_top1:.0%}: "
            "llama.cpp does not apply this adapter as PEFT did (rsLoRA/DoRA or embedding adapters are not supported by its converter)"
        )
    modelfile = None
    if modelfile_args is not None:
        text = build_modelfile(tokenizer, base_path.name, adapter=adapter_path.name, **modelfile_args).text
        atomic_write_text(folder / run.adapter_modelfile.name, text)
        modelfile = run.adapter_modelfile.relative_to(run.gguf).as_posix()
    return AdapterGGUF(
        f"{run.adapter_gguf_folder.relative_to(run.gguf).as_posix()}/", adapter_path.name, adapter_path.stat().st_size,
        base_path.name, base_path.stat().st_size, round(top1, 4), round(kl, 6), positions, modelfile,
        round(time.perf_counter() - started, 2),
    )


def _convert_base_and_adapter(config: RunConfig, run: RunDir, folder: Path, tokenizer, out_type: str) -> tuple[Path, Path]:
    """The full-precision base (saved with the run's tokenizer: same template and EOS as the merged
    files) and the adapter, both converted by llama.cpp into `folder`."""
    import torch

    with tempfile.TemporaryDirectory(prefix="medtune-base-") as scratch:
        base_hf = Path(scratch) / "base"
        base = load_base_model(config.model, dtype=torch.float32)
        base.save_pretrained(base_hf)
        del base
        tokenizer.save_pretrained(base_hf)
        generation = run.merged / "generation_config.json"
        if generation.is_file():
            shutil.copyfile(generation, base_hf / generation.name)
        metadata = gguf_metadata(config, description=f"base model of the {config.name} LoRA adapter (medtune)")
        with staged_model_folder(base_hf, config) as staged:
            base_path = llamacpp.convert_to_gguf(staged, folder / run.adapter_base_gguf_file(out_type).name, out_type, metadata)
            adapter_path = llamacpp.convert_lora_to_gguf(merged_adapter(config, run), staged,
                                                         folder / run.adapter_gguf_file(out_type).name, out_type)
    return base_path, adapter_path
