"""The export stage: merged HF model -> 16-bit GGUF -> quantized GGUFs -> proof they still work.

Everything goes through the pinned llama.cpp (see `medtune.llamacpp`): its converter writes the
16-bit file, its quantizer makes every other type from that file (never from another quant), and
its runtime loads each result. Checks, each aimed at a way exported chat models break:
- metadata (GGUFReader): model name, license/base model, the chat template, EOS = end-of-turn;
- the runtime's own chat path (GGUF template + llama.cpp tokenizer) produces exactly the tokens
  transformers produces for the same conversation (no double BOS, no tokenizer drift);
- 16-bit next-token predictions agree with the merged HF model (>= export.min_f16_top1);
- each quant's top-1 agreement and mean KL divergence against the 16-bit file on the chat prompts;
- a greedy answer to the seed's test question with every file, which must end by EOS;
- the quality table (`medtune.quality`): perplexity, mean and 99th-percentile KL and top-1 agreement
  against the 16-bit file on the run's held-out val split, through llama.cpp's llama-perplexity,
  for every quant made with the importance matrix (`medtune.imatrix`) and, for comparison, without;
  a shipped file above its bar (`export.max_mean_kl`) fails the stage with the figure;
- optionally the LoRA adapter as GGUF, checked on its base against the merged file (`medtune.lora_gguf`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medtune.artifacts import atomic_dir, atomic_write_json, atomic_write_text
from medtune.config import EMBEDDED_MODEL, RunConfig
from medtune.errors import ArtifactError
from medtune.imatrix import prepare_imatrix
from medtune.lora_gguf import export_adapter_gguf
from medtune.merge import encode_prompt, merged_dir, prompt_logits, verification_texts
from medtune.quality import CorpusText, QualityMeter, QualityTable, check_bars, count_tokens, split_text

SEED_TEST_QUESTION = (
    "A patient presents with severe headache and neck stiffness. What is the most likely diagnosis? "
    "A. Migraine B. Meningitis C. Tension headache D. Sinusitis"
)
MERGED_REQUIRED = ("config.json",)


@dataclass
class GGUFCheck:
    """One GGUF file and what the checks found."""

    type: str
    file: str
    size_bytes: int
    bits_per_weight: float
    versus: str  # what top1_agreement compares against
    top1_agreement: float
    mean_kl: float | None  # KL(16-bit || this file), nats per position; None for the 16-bit file
    answer: str
    answer_tokens: int
    stopped_on_eos: bool
    make_seconds: float


@dataclass
class ExportResult:
    """What the export stage wrote and verified."""

    gguf_dir: Path
    outtype: str
    files: list[GGUFCheck]
    metadata: dict[str, Any]
    modelfile: str | None
    modelfile_template: str
    prompts: int
    positions: int
    prompt_source: str
    n_threads: int
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    imatrix: dict[str, Any] | None = None  # ImatrixInfo.figures(), None: quantized without one
    quality: dict[str, Any] | None = None  # QualityTable.figures()
    adapter: dict[str, Any] | None = None  # AdapterGGUF.figures() when export.adapter_gguf

    @property
    def f16_top1_agreement(self) -> float:
        return self.files[0].top1_agreement

    def figures(self) -> dict[str, Any]:
        out = asdict(self)
        out["gguf_dir"] = str(self.gguf_dir)
        out["f16_top1_agreement"] = self.f16_top1_agreement
        shipped = {row["type"]: row for row in (self.quality or {}).get("rows", []) if row["shipped"]}
        out["quants"] = {
            f.type: {"top1_agreement": f.top1_agreement, "mean_kl": f.mean_kl, "size_bytes": f.size_bytes,
                     **({f"heldout_{k}": shipped[f.type][k] for k in ("perplexity", "mean_kl", "p99_kl", "top1_agreement")}
                        if f.type in shipped else {})}
            for f in self.files[1:]
        }
        if self.adapter:
            out["adapter_top1_vs_merged"] = self.adapter["top1_vs_merged"]
        return out


def gguf_dir(config: RunConfig) -> Path:
    return config.run_dir / "gguf"


def gguf_name(config: RunConfig, type_name: str) -> str:
    return f"{config.name}-{type_name.upper()}.gguf"


def base_model_info(config: RunConfig) -> tuple[str | None, str | None, str | None]:
    """(display name, hub id or None, license or None) of the base model."""
    from medtune import embedded

    base = config.model.base
    if base == EMBEDDED_MODEL:
        return embedded.HUB_ID.split("/")[-1], embedded.HUB_ID, config.model.license or embedded.LICENSE
    path = Path(base).expanduser()
    if path.exists() or base.endswith(".gguf"):
        return path.name.removesuffix(".gguf"), None, config.model.license
    return base.split("/")[-1], base, config.model.license


def export_gguf(config: RunConfig) -> ExportResult:
    """Convert runs/<name>/merged to GGUF, quantize, verify, write the Modelfile: runs/<name>/gguf/.

    Raises ConfigError (unknown quant type), ToolError (llama.cpp missing or failing),
    ArtifactError (no merged model; a check failed; the previous gguf/ folder is then kept).
    """
    from transformers import AutoTokenizer

    from medtune import llamacpp
    from medtune.llamacpp import normalize_quant_types
    from medtune.tokenizer import end_of_turn_token
    from medtune.ui import progress

    started = time.perf_counter()
    export = config.export
    out_type = export.outtype.upper()
    quant_types = normalize_quant_types(export.quant_types, export.outtype, imatrix=True)  # before any slow work
    llamacpp.load_runtime()
    llamacpp.find_converter()
    for tool in llamacpp.TOOLS:  # llama-perplexity measures every file; -imatrix/-quantize make the imatrix quants
        llamacpp.find_tool(tool)
    if export.adapter_gguf:
        llamacpp.find_lora_converter()
    source = merged_dir(config)
    missing = [name for name in MERGED_REQUIRED if not (source / name).is_file()]
    if not source.is_dir() or missing or not any(source.glob("*.safetensors")):
        raise ArtifactError(f"no merged model in {source}; run `medtune merge CONFIG` first")
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    end_of_turn = end_of_turn_token(tokenizer)
    eot_id = tokenizer.convert_tokens_to_ids(end_of_turn)
    threads = export.n_threads or llamacpp.default_threads()
    conversations, texts, prompt_source = verification_texts(config.run_dir, tokenizer, export.verify_prompts)
    prompts = [encode_prompt(tokenizer, text) for text in texts]
    corpus, corpus_tokens = _heldout_corpus(config, tokenizer)  # fails early when it is too short
    seed_messages = ([{"role": "system", "content": config.data.system_prompt}] if config.data.system_prompt else []) + [
        {"role": "user", "content": SEED_TEST_QUESTION}
    ]
    notes: list[str] = []

    timings: dict[str, float] = {}
    with progress() as bar, atomic_dir(gguf_dir(config)) as tmp, ThreadPoolExecutor(max_workers=1) as side:
        steps = bar.add_task("export", total=4 + 3 * len(quant_types) + 1 + int(export.adapter_gguf))
        scratch = tmp / ".scratch"  # inside the temporary folder: gone with it if anything fails
        scratch.mkdir()
        # Overlap: the converter is a subprocess and the quantizer is C code (both release the GIL),
        # so the transformers reference logits and the GGUFReader check run alongside them.
        reference = side.submit(_timed, timings, "reference_logits", _hf_top1, source, prompts, threads)
        bar.update(steps, description=f"convert to {out_type}")
        t0 = time.perf_counter()
        with _staging_copy(source, config) as staged:
            f16_path = llamacpp.convert_to_gguf(staged, tmp / gguf_name(config, out_type), export.outtype, _metadata(config))
        made = {out_type: (f16_path, time.perf_counter() - t0)}
        timings["convert"] = round(made[out_type][1], 2)
        reference_top1 = reference.result()
        bar.advance(steps)
        # GGUFReader parses the whole vocabulary in Python (seconds per file): the 16-bit file is
        # read with it; every file's metadata is also checked as the runtime reads it (_answer).
        checked = side.submit(_timed, timings, "metadata_check", _check_metadata, config, f16_path, tokenizer, end_of_turn, eot_id)
        bar.update(steps, description="importance matrix" if export.imatrix != "off" else "quantize")
        imatrix, imatrix_note = _timed(timings, "imatrix", prepare_imatrix, config, f16_path, tmp, tokenizer, threads)
        imatrix_path = tmp / imatrix.file if imatrix else None
        if imatrix_note:
            notes.append(imatrix_note)
        needing = [t for t in quant_types if t in llamacpp.NEEDS_IMATRIX]
        if needing and imatrix is None:
            raise ArtifactError(f"{', '.join(needing)} need an importance matrix and there is none ({imatrix_note}); "
                                "drop them from export.quant_types or give export.imatrix a file")
        bar.advance(steps)

        # The quality table: the 16-bit file first (its log-probabilities are the reference), then
        # every quant as shipped and, with an imatrix, the same type without it (made, measured, deleted).
        corpus_file = scratch / "heldout.txt"
        corpus_file.write_text(corpus.text, encoding="utf-8")
        meter = QualityMeter(f16_path, corpus_file, scratch, ctx=export.quality_ctx, chunks=export.quality_chunks, threads=threads)
        bar.update(steps, description=f"perplexity of {out_type} on the val split")
        quality_rows = [_timed(timings, f"quality_{out_type}", meter.reference, out_type)]
        bar.advance(steps)
        for type_name in quant_types:
            bar.update(steps, description=f"quantize {type_name}" + (" with the imatrix" if imatrix else ""))
            t0 = time.perf_counter()
            path = llamacpp.quantize_gguf(f16_path, tmp / gguf_name(config, type_name), type_name,
                                          n_threads=os.cpu_count(), imatrix=imatrix_path)
            made[type_name] = (path, time.perf_counter() - t0)
            bar.advance(steps)
            bar.update(steps, description=f"perplexity and KL of {type_name}")
            quality_rows.append(_timed(timings, f"quality_{type_name}", meter.measure, path, type_name,
                                       imatrix=imatrix is not None, shipped=True))
            if imatrix is not None and export.compare_without_imatrix and type_name not in llamacpp.NEEDS_IMATRIX:
                plain = llamacpp.quantize_gguf(f16_path, scratch / gguf_name(config, type_name), type_name, n_threads=os.cpu_count())
                quality_rows.append(_timed(timings, f"quality_{type_name}_no_imatrix", meter.measure, plain, type_name,
                                           imatrix=False, shipped=False))
                plain.unlink()
            bar.advance(steps)
        quality = QualityTable(corpus.source, corpus.records, corpus_tokens, export.quality_ctx, meter.chunks_used,
                               meter.positions, quality_rows)
        failed = check_bars(quality, export.max_mean_kl, out_type)
        if failed:
            message = (
                "; ".join(failed) + f". Not shipped: the export failed and the previous {gguf_dir(config)} was kept "
                "(the whole table is in manifest.json under stages.export.quality). Raise the bar, drop the type, or use "
                "a finer one" + ("; the base is a quantized GGUF, so lower-bit types round its weights twice (BENCHMARKS.md)"
                                 if _quantized_base_note(config, quant_types) else "")
            )
            _record_failure(config, message, quality, imatrix)
            raise ArtifactError(message)
        bar.update(steps, description="check metadata and chat prompt")
        metadata = checked.result()
        metadata.update(_check_chat_prompt(f16_path, tokenizer, conversations[0], threads))
        bar.advance(steps)

        checks: list[GGUFCheck] = []
        f16_logprobs: list[Any] = []
        for type_name, (path, seconds) in made.items():
            bar.update(steps, description=f"verify {type_name}")
            is_base = type_name == out_type
            logprobs = _timed(timings, f"logits_{type_name}", _gguf_logprobs, path, prompts, threads)
            if is_base:
                top1, kl = _top1(reference_top1, [lp.argmax(-1) for lp in logprobs]), None
                f16_logprobs = logprobs
            else:
                top1 = _top1([lp.argmax(-1) for lp in f16_logprobs], [lp.argmax(-1) for lp in logprobs])
                kl = _mean_kl(f16_logprobs, logprobs)
            del logprobs
            t0 = time.perf_counter()
            answer, n_tokens, stopped, bpw = _answer(config, path, tokenizer, eot_id, seed_messages, threads)
            timings[f"answer_{type_name}"] = round(time.perf_counter() - t0, 2)
            size = path.stat().st_size
            checks.append(
                GGUFCheck(type_name, path.name, size, round(bpw, 3), "merged HF model" if is_base else out_type,
                          round(top1, 4), None if kl is None else round(kl, 5), answer, n_tokens, stopped, round(seconds, 2))
            )
            bar.advance(steps)

        _enforce(config, checks, metadata)
        base_note = _quantized_base_note(config, quant_types)
        if base_note:
            notes.append(base_note)
        for check in checks[1:]:
            if not check.stopped_on_eos:
                notes.append(f"{check.type}: the test answer hit the {export.answer_max_tokens}-token limit without EOS")
        modelfile, template_note = None, "not written (export.ollama_modelfile: false)"
        if export.ollama_modelfile:
            modelfile, template_note = _write_modelfile(config, tmp, tokenizer, end_of_turn, checks, metadata)
        adapter = None
        if export.adapter_gguf:
            bar.update(steps, description="LoRA adapter as GGUF")
            modelfile_args = ({"end_of_turn": end_of_turn, "runtime_adds_bos": bool(metadata.get("runtime_adds_bos")),
                               "license_text": base_model_info(config)[2]} if export.ollama_modelfile else None)
            adapter = _timed(timings, "adapter_gguf", export_adapter_gguf, config, tmp, source, tokenizer, f16_logprobs,
                             prompts, threads, modelfile_args)
            bar.advance(steps)
        del f16_logprobs
        shutil.rmtree(scratch)
        positions = sum(len(p) for p in prompts)
        result = ExportResult(
            gguf_dir=gguf_dir(config), outtype=out_type, files=checks, metadata=metadata, modelfile=modelfile,
            modelfile_template=template_note, prompts=len(prompts), positions=positions, prompt_source=prompt_source,
            n_threads=threads, seconds=0.0, timings=timings, notes=notes,
            imatrix=imatrix.figures() if imatrix else None, quality=quality.figures(),
            adapter=adapter.figures() if adapter else None,
        )
        atomic_write_json(tmp / "verification.json", result.figures())
        bar.update(steps, description="done")
    result.seconds = round(time.perf_counter() - started, 2)
    _record(config, result)
    return result


def _heldout_corpus(config: RunConfig, tokenizer) -> tuple[CorpusText, int]:
    """The quality table's text: the run's val split (else medtune's shipped held-out sample), as
    many records as export.quality_chunks chunks need; with its token count. Raises ArtifactError
    when it is shorter than the two chunks llama-perplexity needs."""
    from medtune.data.loading import builtin_path

    export = config.export
    ctx = export.quality_ctx
    val = config.run_dir / "data" / "val"
    if val.is_dir():
        corpus = split_text(val, max_tokens=(export.quality_chunks + 1) * ctx)
        corpus.source = f"the val split ({corpus.records} held-out records)"
    else:
        lines = builtin_path("builtin:reasonmed-heldout").read_text(encoding="utf-8").splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
        text = "\n\n".join(f"{r['instruction']}\n\n{r['output']}".strip() for r in records) + "\n"
        corpus = CorpusText(text, len(records), f"medtune's held-out sample ({len(records)} records; the run has no val split)")
    tokens = count_tokens(tokenizer, corpus.text)
    if tokens < 2 * ctx:
        raise ArtifactError(
            f"the held-out text for the quality table ({corpus.source}) is {tokens} tokens, and llama-perplexity needs at "
            f"least 2 x export.quality_ctx = {2 * ctx}: lower export.quality_ctx or raise data.val_size"
        )
    return corpus, tokens


# ---- steps --------------------------------------------------------------------------------------


def _timed(timings: dict[str, float], name: str, function, *args, **kwargs):
    started = time.perf_counter()
    try:
        return function(*args, **kwargs)
    finally:
        timings[name] = round(time.perf_counter() - started, 2)


def _quantized_base_note(config: RunConfig, quant_types: list[str]) -> str | None:
    """A note when the base model is a quantized GGUF (the embedded SmolLM2 is Q4_1).

    Its weights already sit on that type's grid; the merged model is that grid plus a small LoRA
    delta, so another quant type rounds them a second time and lands further from F16 than its
    bits suggest (BENCHMARKS.md: Q4_1 KL 0.026 vs Q5_K_M 0.091 on the demo model).
    """
    from medtune.tokenizer import resolve_model_source

    try:
        source = resolve_model_source(config.model.base)
    except Exception:  # noqa: BLE001 - a note is optional; the base was loaded fine earlier
        return None
    if source.kind != "gguf":
        return None
    base_type = gguf_weight_type(Path(source.path) / source.gguf_file)
    if base_type is None or base_type in ("F32", "F16", "BF16"):
        return None
    # 6- and 8-bit grids are fine enough that the second rounding hardly shows (Q8_0 KL 0.006).
    similar = [t for t in quant_types if t != base_type and t.startswith(("Q2", "Q3", "Q4", "Q5", "IQ"))]
    if not similar:
        return None
    return (f"the base model is a {base_type} GGUF, so its weights are already rounded to {base_type}; "
            f"{', '.join(similar)} round{'s' if len(similar) == 1 else ''} them a second time and can land further "
            f"from F16 than their size suggests. {base_type} itself avoids that: add it to export.quant_types "
            f"and compare the KL column above.")


def gguf_weight_type(path: Path) -> str | None:
    """The GGUF's main weight type (F16, Q4_1, Q4_K_M...) from general.file_type, None if unknown."""
    try:
        from gguf import GGUFReader, LlamaFileType

        reader = GGUFReader(str(path))
        field_ = reader.fields.get("general.file_type")
        if field_ is None:
            return None
        name = LlamaFileType(int(field_.parts[field_.data[0]][0])).name
    except Exception:  # noqa: BLE001 - unreadable header or unknown enum value
        return None
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


def _hf_top1(source: Path, prompts: list[list[int]], threads: int) -> list[Any]:
    """The merged model's top-1 prediction at every prompt position: recorded by the merge stage
    for the same prompts (then reused), else computed here."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from medtune.merge import REFERENCE_FILE, torch_threads

    recorded = source / REFERENCE_FILE
    if recorded.is_file():
        saved = json.loads(recorded.read_text(encoding="utf-8"))
        if saved.get("prompts") == prompts:
            return [np.asarray(top1) for top1 in saved["top1"]]

    model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32).eval()
    with torch_threads(threads):
        top1 = [logits.argmax(-1).numpy() for logits in prompt_logits(model, prompts)]
    del model
    return top1


class _staging_copy:
    """A temporary view of the merged folder for the converter: symlinks to its files, plus
    - config.json without `quantization_config` (transformers leaves it on GGUF-loaded models and
      the converter then treats the weights as pre-quantized);
    - a README.md model card whose front matter carries license and base model, which the
      converter turns into general.license / general.base_model.* metadata."""

    def __init__(self, source: Path, config: RunConfig):
        self.source, self.config = source, config

    def __enter__(self) -> Path:
        self._tmp = tempfile.TemporaryDirectory(prefix="medtune-stage-")
        # The converter derives general.basename from the folder name: name it after the run, not
        # the random temporary name, so the same weights always give byte-identical files.
        staged = Path(self._tmp.name) / self.config.name
        staged.mkdir()
        for item in self.source.iterdir():
            if item.name not in ("config.json", "README.md"):
                (staged / item.name).symlink_to(item.resolve())
        model_config = json.loads((self.source / "config.json").read_text(encoding="utf-8"))
        model_config.pop("quantization_config", None)
        (staged / "config.json").write_text(json.dumps(model_config, indent=2), encoding="utf-8")
        _, hub_id, license_id = base_model_info(self.config)
        front = ["---"]
        if license_id:
            front.append(f"license: {license_id}")
        if hub_id:
            front.append(f"base_model: {hub_id}")
        front += ["tags: [medtune, medical]", "---", "", f"# {self.config.name}", ""]
        (staged / "README.md").write_text("\n".join(front), encoding="utf-8")
        return staged

    def __exit__(self, *exc: Any) -> None:
        self._tmp.cleanup()


def _metadata(config: RunConfig) -> dict[str, Any]:
    name, hub_id, _ = base_model_info(config)
    meta: dict[str, Any] = {
        "general.name": config.name,
        "general.basename": config.name,
        "general.finetune": "medtune",
        "general.description": f"{config.name}: {name} fine-tuned with a LoRA adapter by medtune",
    }
    if name and not hub_id:  # hub ids come from the model card with their repo URL
        meta["general.base_models"] = [{"name": name}]
    return meta


def _field(reader, key: str) -> Any:
    item = reader.fields.get(key)
    return item.contents() if item is not None else None


def _check_metadata(config: RunConfig, path: Path, tokenizer, end_of_turn: str, eot_id: int) -> dict[str, Any]:
    """Read the file back with GGUFReader and check what chat front ends rely on."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    found = {
        "name": _field(reader, "general.name"),
        "license": _field(reader, "general.license"),
        "base_model": _field(reader, "general.base_model.0.name"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "add_bos_token": _field(reader, "tokenizer.ggml.add_bos_token"),
        "end_of_turn": end_of_turn,
        "chat_template_matches": _field(reader, "tokenizer.chat_template") == tokenizer.chat_template,
    }
    problems = []
    if found["name"] != config.name:
        problems.append(f"general.name is {found['name']!r}, expected {config.name!r}")
    if found["eos_token_id"] != eot_id:
        problems.append(f"EOS id is {found['eos_token_id']}, not the end-of-turn token {end_of_turn!r} ({eot_id}): generation would not stop")
    if not found["chat_template_matches"]:
        problems.append("tokenizer.chat_template is missing or differs from the merged model's template")
    if problems:
        raise ArtifactError(f"{path.name}: " + "; ".join(problems))
    return found


def _check_chat_prompt(path: Path, tokenizer, messages: list[dict[str, str]], threads: int) -> dict[str, Any]:
    """The runtime's chat path (llama-cpp-python: GGUF template, then llama.cpp tokenizer) vs transformers."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from medtune import llamacpp

    llm = llamacpp.open_gguf(path, n_ctx=256, n_threads=threads)
    try:
        template = llm.metadata.get("tokenizer.chat_template", "")
        bos_id, eos_id = llm.token_bos(), llm.token_eos()
        formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=llm._model.token_get_text(eos_id) if eos_id >= 0 else "",
            bos_token=llm._model.token_get_text(bos_id) if bos_id >= 0 else "",
        )
        rendered = formatter(messages=messages)
        runtime_ids = llm.tokenize(rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True)
        runtime_adds_bos = llm.tokenize(b"x", add_bos=True, special=True)[:1] == [bos_id] and bos_id >= 0
    finally:
        llm.close()
    expected = encode_prompt(tokenizer, tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    leading_bos = next((i for i, t in enumerate(runtime_ids) if t != bos_id), len(runtime_ids)) if bos_id >= 0 else 0
    if leading_bos > 1:
        raise ArtifactError(f"{path.name}: the runtime's chat prompt starts with {leading_bos} BOS tokens (double BOS)")
    if runtime_ids[: len(expected)] != expected:
        diverge = next((i for i, (a, b) in enumerate(zip(runtime_ids, expected)) if a != b), min(len(runtime_ids), len(expected)))
        raise ArtifactError(
            f"{path.name}: llama.cpp's chat prompt differs from transformers' at token {diverge} "
            f"({runtime_ids[diverge:diverge + 3]} vs {expected[diverge:diverge + 3]}): tokenizer or template was not converted faithfully"
        )
    return {"chat_prompt_matches_hf": True, "leading_bos": leading_bos, "runtime_adds_bos": runtime_adds_bos}


def _gguf_logprobs(path: Path, prompts: list[list[int]], threads: int) -> list[Any]:
    """Log-softmax of the file's next-token logits for each prompt (float32, [len, vocab])."""
    from medtune import llamacpp

    llm = llamacpp.open_gguf(path, n_ctx=max(len(p) for p in prompts) + 8, logits_all=True, n_threads=threads)
    try:
        return [_log_softmax(llamacpp.sequence_logits(llm, ids)) for ids in prompts]
    finally:
        llm.close()


def _log_softmax(logits):
    import numpy as np

    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _top1(reference: list[Any], candidate: list[Any]) -> float:
    agree = sum(int((r == c).sum()) for r, c in zip(reference, candidate, strict=True))
    return agree / max(sum(len(r) for r in reference), 1)


def _mean_kl(p_logprobs: list[Any], q_logprobs: list[Any]) -> float:
    """Mean over positions of KL(P || Q) in nats."""
    import numpy as np

    total, count = 0.0, 0
    for p, q in zip(p_logprobs, q_logprobs, strict=True):
        total += float((np.exp(p) * (p - q)).sum())
        count += p.shape[0]
    return total / max(count, 1)


def _answer(config: RunConfig, path: Path, tokenizer, eot_id: int, messages: list[dict[str, str]], threads: int) -> tuple[str, int, bool, float]:
    """Greedy chat answer through the runtime's own chat path: (text, tokens, ended by EOS, bits per weight).

    Also checks the metadata as llama.cpp reads it from this file (name, EOS, chat template).
    """
    from medtune import llamacpp

    max_tokens = config.export.answer_max_tokens
    llm = llamacpp.open_gguf(path, n_ctx=max_tokens + 512, n_threads=threads)
    try:
        meta = llm.metadata
        problems = []
        if meta.get("general.name") != config.name:
            problems.append(f"general.name is {meta.get('general.name')!r}, expected {config.name!r}")
        if meta.get("tokenizer.ggml.eos_token_id") != str(eot_id):
            problems.append(f"EOS id is {meta.get('tokenizer.ggml.eos_token_id')}, not the end-of-turn id {eot_id}")
        if meta.get("tokenizer.chat_template") != tokenizer.chat_template:
            problems.append("the chat template is missing or differs from the merged model's")
        if problems:
            raise ArtifactError(f"{path.name}: " + "; ".join(problems))
        bpw = 8.0 * llm._model.size() / max(llm._model.n_params(), 1)
        reply = llm.create_chat_completion(messages=messages, temperature=0.0, max_tokens=max_tokens, repeat_penalty=1.0)
    finally:
        llm.close()
    choice = reply["choices"][0]
    tokens = int(reply["usage"]["completion_tokens"])
    stopped = choice["finish_reason"] == "stop" and tokens < max_tokens
    return (choice["message"]["content"] or "").strip(), tokens, stopped, bpw


def _enforce(config: RunConfig, checks: list[GGUFCheck], metadata: dict[str, Any]) -> None:
    base = checks[0]
    if base.top1_agreement < config.export.min_f16_top1:
        raise ArtifactError(
            f"{base.file}: next-token agreement with the merged model is {base.top1_agreement:.2%}, below "
            f"export.min_f16_top1={config.export.min_f16_top1:.0%}: the llama.cpp conversion changed the model"
        )
    if config.export.require_eos_stop and not base.stopped_on_eos:
        raise ArtifactError(
            f"{base.file}: the answer to the test question ran to export.answer_max_tokens="
            f"{config.export.answer_max_tokens} without an EOS ({metadata['end_of_turn']!r}): the model does not stop. "
            "Check that training labelled the end-of-turn token, or raise answer_max_tokens / set export.require_eos_stop=false"
        )


def _write_modelfile(config: RunConfig, folder: Path, tokenizer, end_of_turn: str, checks: list[GGUFCheck], metadata: dict[str, Any]) -> tuple[str, str]:
    from medtune.ollama import build_modelfile

    types = [c.type for c in checks]
    wanted = (config.export.modelfile_type or ("Q4_K_M" if "Q4_K_M" in types else (types[1] if len(types) > 1 else types[0]))).upper()
    chosen = next(c.file for c in checks if c.type == wanted)
    _, _, license_id = base_model_info(config)
    modelfile = build_modelfile(
        tokenizer, chosen, end_of_turn=end_of_turn, runtime_adds_bos=bool(metadata.get("runtime_adds_bos")),
        license_text=license_id, others=[c.file for c in checks if c.file != chosen],
    )
    atomic_write_text(folder / "Modelfile", modelfile.text)
    return "Modelfile", modelfile.template


def _record_failure(config: RunConfig, message: str, quality: QualityTable, imatrix) -> None:
    """Mark the export stage failed in the manifest, with the figures that failed it (gguf/ is untouched)."""
    from medtune.artifacts import read_manifest, record_stage

    entry = read_manifest(config.run_dir).get("stages", {}).get("export", {})
    record_stage(config.run_dir, "export", {
        **{k: v for k, v in entry.items() if k in ("fingerprint",)}, "status": "failed", "error": message,
        "quality": quality.figures(), "imatrix": imatrix.figures() if imatrix else None,
    })


def _record(config: RunConfig, result: ExportResult) -> None:
    from medtune.pipeline import record_stage_result

    record_stage_result(config, "export", result.figures())
