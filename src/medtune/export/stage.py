"""The export stage: merged HF model -> 16-bit GGUF -> quantized GGUFs -> proof they still work.

Everything goes through the pinned llama.cpp (see `medtune.llamacpp`): its converter writes the
16-bit file from a staged view of the merged folder (`staging`), its quantizer makes every other
type from that file (never from another quant), and its runtime loads each result. Checks
(`checks`, `medtune.verify`):
- metadata (GGUFReader and the runtime): model name, license/base model, the chat template, EOS =
  end-of-turn;
- the runtime's own chat path produces exactly the tokens transformers produces for the same
  conversation (no double BOS, no tokenizer drift);
- 16-bit next-token predictions agree with the merged HF model (>= export.min_f16_top1);
- each quant's top-1 agreement and mean KL divergence against the 16-bit file on the chat prompts;
- a greedy answer to the seed's test question with every file, which must end by EOS;
- the quality table (`quality`): perplexity, mean and 99th-percentile KL and top-1 agreement
  against the 16-bit file on the run's held-out val split, through llama.cpp's llama-perplexity,
  for every quant made with the importance matrix (`imatrix`) and, for comparison, without; a
  shipped file above its bar (`export.max_mean_kl`) fails the stage with the figures;
- optionally the LoRA adapter as GGUF, checked on its base against the merged file (`adapter`).
The Ollama Modelfile comes from `modelfile`.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medtune import llamacpp
from medtune.artifacts import atomic_dir, atomic_write_json, atomic_write_text
from medtune.config import RunConfig
from medtune.errors import ArtifactError
from medtune.export.adapter import export_adapter_gguf
from medtune.export.checks import (
    answer_test_question,
    check_16bit_file,
    check_chat_prompt,
    check_metadata,
    quantized_base_note,
)
from medtune.export.imatrix import ImatrixInfo, prepare_imatrix
from medtune.export.modelfile import build_modelfile, choose_modelfile_type
from medtune.export.quality import (
    CorpusText,
    QualityBarError,
    QualityMeter,
    QualityRow,
    QualityTable,
    check_bars,
    heldout_corpus,
)
from medtune.export.staging import base_model_info, gguf_metadata, staged_model_folder
from medtune.rundir import RunDir
from medtune.tokenizer import end_of_turn_token
from medtune.ui import progress
from medtune.verify import (
    SEED_TEST_QUESTION,
    encode_prompt,
    gguf_logprobs,
    hf_top1,
    mean_kl,
    top1_agreement,
    top1_tokens,
    verification_texts,
)

MERGED_REQUIRED = ("config.json",)
VERIFICATION_FILE = "verification.json"  # in gguf/: the ExportResult's figures
SCRATCH = ".scratch"  # inside the temporary gguf/ folder: gone with it if anything fails


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


@dataclass
class ExportInputs:
    """What export reads before any slow work: the merged model's tokenizer, the prompts, the corpus."""

    tokenizer: Any
    end_of_turn: str
    eot_id: int
    threads: int
    conversations: list[list[dict[str, str]]]
    prompts: list[list[int]]
    prompt_source: str
    corpus: CorpusText
    corpus_tokens: int
    seed_messages: list[dict[str, str]]


@dataclass
class ExportJob:
    """One export in progress: where it writes (`folder`, the temporary gguf/) and what it has measured."""

    config: RunConfig
    run: RunDir
    inputs: ExportInputs
    folder: Path
    bar: Any
    task: Any
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def scratch(self) -> Path:
        return self.folder / SCRATCH

    def file(self, type_name: str, *, folder: Path | None = None) -> Path:
        """Where the GGUF of `type_name` is written (the temporary gguf/, or `folder`)."""
        return (folder or self.folder) / self.run.gguf_file(type_name).name

    def step(self, description: str) -> None:
        self.bar.update(self.task, description=description)

    def done(self) -> None:
        self.bar.advance(self.task)

    def timed(self, name: str, function, *args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            self.timings[name] = round(time.perf_counter() - started, 2)


def export_gguf(config: RunConfig, run: RunDir) -> ExportResult:
    """Convert the run's merged/ folder to GGUF, quantize, verify, write the Modelfile: the run's gguf/.

    Raises ConfigError (unknown quant type), ToolError (llama.cpp missing or failing),
    ArtifactError (no merged model; a check failed; the previous gguf/ folder is then kept),
    QualityBarError (a shipped quant above export.max_mean_kl; its `figures` hold the table).
    """
    started = time.perf_counter()
    export = config.export
    out_type = export.outtype.upper()
    quant_types = _check_tools(config)  # before any slow work
    inputs = _read_inputs(config, run)
    with progress() as bar, atomic_dir(run.gguf) as tmp, ThreadPoolExecutor(max_workers=1) as side:
        task = bar.add_task("export", total=4 + 3 * len(quant_types) + 1 + int(export.adapter_gguf))
        job = ExportJob(config, run, inputs, tmp, bar, task)
        job.scratch.mkdir()
        # Overlap: the converter is a subprocess and the quantizer is C code (both release the GIL),
        # so the transformers reference predictions and the GGUFReader check run alongside them.
        reference = side.submit(job.timed, "reference_logits", hf_top1, run.merged, inputs.prompts, inputs.threads)
        f16_path, convert_seconds = _convert(job, out_type)
        metadata_check = side.submit(job.timed, "metadata_check", check_metadata, config, f16_path, inputs.tokenizer,
                                     inputs.end_of_turn, inputs.eot_id)
        imatrix = _importance_matrix(job, f16_path, quant_types)
        made, quality = _quantize_and_measure(job, f16_path, out_type, quant_types, imatrix)
        metadata = _check_metadata_and_chat_prompt(job, f16_path, metadata_check)
        made = {out_type: (f16_path, convert_seconds), **made}
        checks, f16_logprobs = _verify_files(job, made, out_type, reference.result())
        check_16bit_file(config, checks[0].file, checks[0].top1_agreement, checks[0].stopped_on_eos, inputs.end_of_turn)
        _add_notes(job, checks, quant_types)
        modelfile, template_note = _write_modelfile(job, checks, metadata)
        adapter = _adapter_gguf(job, metadata, f16_logprobs)
        del f16_logprobs
        shutil.rmtree(job.scratch)
        result = ExportResult(
            gguf_dir=run.gguf, outtype=out_type, files=checks, metadata=metadata, modelfile=modelfile,
            modelfile_template=template_note, prompts=len(inputs.prompts), positions=sum(len(p) for p in inputs.prompts),
            prompt_source=inputs.prompt_source, n_threads=inputs.threads, seconds=0.0, timings=job.timings,
            notes=job.notes, imatrix=imatrix.figures() if imatrix else None, quality=quality.figures(),
            adapter=adapter.figures() if adapter else None,
        )
        atomic_write_json(tmp / VERIFICATION_FILE, result.figures())
        job.step("done")
    result.seconds = round(time.perf_counter() - started, 2)
    return result


# ---- steps --------------------------------------------------------------------------------------


def _check_tools(config: RunConfig) -> list[str]:
    """The quant types to make (ConfigError for unknown ones); ToolError unless every llama.cpp piece is there."""
    export = config.export
    quant_types = llamacpp.normalize_quant_types(export.quant_types, export.outtype, imatrix=True)
    llamacpp.load_runtime()
    llamacpp.find_converter()
    for tool in llamacpp.TOOLS:  # llama-perplexity measures every file; -imatrix/-quantize make the imatrix quants
        llamacpp.find_tool(tool)
    if export.adapter_gguf:
        llamacpp.find_lora_converter()
    return quant_types


def _read_inputs(config: RunConfig, run: RunDir) -> ExportInputs:
    """The merged model's tokenizer, the verification prompts and the held-out corpus (which fails
    early when it is too short). Raises ArtifactError when there is no merged model."""
    from transformers import AutoTokenizer

    source = run.merged
    missing = [name for name in MERGED_REQUIRED if not (source / name).is_file()]
    if not source.is_dir() or missing or not any(source.glob("*.safetensors")):
        raise ArtifactError(f"no merged model in {source}; run `medtune merge CONFIG` first")
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    end_of_turn = end_of_turn_token(tokenizer)
    conversations, texts, prompt_source = verification_texts(run, tokenizer, config.export.verify_prompts)
    corpus, corpus_tokens = heldout_corpus(config, run, tokenizer)
    system = [{"role": "system", "content": config.data.system_prompt}] if config.data.system_prompt else []
    return ExportInputs(
        tokenizer=tokenizer, end_of_turn=end_of_turn, eot_id=tokenizer.convert_tokens_to_ids(end_of_turn),
        threads=config.export.n_threads or llamacpp.default_threads(), conversations=conversations,
        prompts=[encode_prompt(tokenizer, text) for text in texts], prompt_source=prompt_source, corpus=corpus,
        corpus_tokens=corpus_tokens, seed_messages=[*system, {"role": "user", "content": SEED_TEST_QUESTION}],
    )


def _convert(job: ExportJob, out_type: str) -> tuple[Path, float]:
    """The 16-bit GGUF, converted from a staged view of merged/: (path, seconds)."""
    job.step(f"convert to {out_type}")
    started = time.perf_counter()
    with staged_model_folder(job.run.merged, job.config) as staged:
        path = llamacpp.convert_to_gguf(staged, job.file(out_type), job.config.export.outtype, gguf_metadata(job.config))
    seconds = time.perf_counter() - started
    job.timings["convert"] = round(seconds, 2)
    job.done()
    return path, seconds


def _importance_matrix(job: ExportJob, f16_path: Path, quant_types: list[str]) -> ImatrixInfo | None:
    """The imatrix the quants are made with (None: without one; ArtifactError when a type needs one)."""
    job.step("importance matrix" if job.config.export.imatrix != "off" else "quantize")
    imatrix, note = job.timed("imatrix", prepare_imatrix, job.config, job.run, f16_path, job.folder,
                              job.inputs.tokenizer, job.inputs.threads)
    if note:
        job.notes.append(note)
    needing = [t for t in quant_types if t in llamacpp.NEEDS_IMATRIX]
    if needing and imatrix is None:
        raise ArtifactError(f"{', '.join(needing)} need an importance matrix and there is none ({note}); "
                            "drop them from export.quant_types or give export.imatrix a file")
    job.done()
    return imatrix


def _quantize_and_measure(job: ExportJob, f16_path: Path, out_type: str, quant_types: list[str],
                          imatrix: ImatrixInfo | None) -> tuple[dict[str, tuple[Path, float]], QualityTable]:
    """Every quant, made from the 16-bit file, and the quality table: the 16-bit file first (its
    log-probabilities are the reference), then every quant as shipped and, with an imatrix, the
    same type without it (made, measured, deleted). Raises QualityBarError when a shipped file is
    above its bar."""
    export, inputs = job.config.export, job.inputs
    corpus_file = job.scratch / "heldout.txt"
    corpus_file.write_text(inputs.corpus.text, encoding="utf-8")
    meter = QualityMeter(f16_path, corpus_file, job.scratch, ctx=export.quality_ctx, chunks=export.quality_chunks,
                         threads=inputs.threads)
    job.step(f"perplexity of {out_type} on the val split")
    rows = [job.timed(f"quality_{out_type}", meter.reference, out_type)]
    job.done()
    made: dict[str, tuple[Path, float]] = {}
    imatrix_path = job.folder / imatrix.file if imatrix else None
    for type_name in quant_types:
        job.step(f"quantize {type_name}" + (" with the imatrix" if imatrix else ""))
        started = time.perf_counter()
        path = llamacpp.quantize_gguf(f16_path, job.file(type_name), type_name, n_threads=os.cpu_count(), imatrix=imatrix_path)
        made[type_name] = (path, time.perf_counter() - started)
        job.done()
        job.step(f"perplexity and KL of {type_name}")
        rows += _measure_quant(job, meter, f16_path, path, type_name, imatrix is not None)
        job.done()
    quality = QualityTable(inputs.corpus.source, inputs.corpus.records, inputs.corpus_tokens, export.quality_ctx,
                           meter.chunks_used, meter.positions, rows)
    _enforce_bars(job, quality, imatrix, out_type, quant_types)
    return made, quality


def _measure_quant(job: ExportJob, meter: QualityMeter, f16_path: Path, path: Path, type_name: str,
                   with_imatrix: bool) -> list[QualityRow]:
    """The shipped file's row and, when it was made with an imatrix, the row of the same type without one."""
    rows = [job.timed(f"quality_{type_name}", meter.measure, path, type_name, imatrix=with_imatrix, shipped=True)]
    if with_imatrix and job.config.export.compare_without_imatrix and type_name not in llamacpp.NEEDS_IMATRIX:
        plain = llamacpp.quantize_gguf(f16_path, job.file(type_name, folder=job.scratch), type_name, n_threads=os.cpu_count())
        rows.append(job.timed(f"quality_{type_name}_no_imatrix", meter.measure, plain, type_name, imatrix=False, shipped=False))
        plain.unlink()
    return rows


def _enforce_bars(job: ExportJob, quality: QualityTable, imatrix: ImatrixInfo | None, out_type: str,
                  quant_types: list[str]) -> None:
    failed = check_bars(quality, job.config.export.max_mean_kl, out_type)
    if not failed:
        return
    message = (
        "; ".join(failed) + f". Not shipped: the export failed and the previous {job.run.gguf} was kept "
        "(the whole table is in manifest.json under stages.export.quality). Raise the bar, drop the type, or use "
        "a finer one" + ("; the base is a quantized GGUF, so lower-bit types round its weights twice (BENCHMARKS.md)"
                         if quantized_base_note(job.config, quant_types) else "")
    )
    raise QualityBarError(message, {"quality": quality.figures(), "imatrix": imatrix.figures() if imatrix else None})


def _check_metadata_and_chat_prompt(job: ExportJob, f16_path: Path, metadata_check: Future) -> dict[str, Any]:
    job.step("check metadata and chat prompt")
    metadata = metadata_check.result()
    metadata.update(check_chat_prompt(f16_path, job.inputs.tokenizer, job.inputs.conversations[0], job.inputs.threads))
    job.done()
    return metadata


def _verify_files(job: ExportJob, made: dict[str, tuple[Path, float]], out_type: str,
                  reference_top1: list[Any]) -> tuple[list[GGUFCheck], list[Any]]:
    """Every file's agreement (the 16-bit one with the merged model, each quant with the 16-bit
    file) and its answer to the test question; also the 16-bit file's log-probabilities."""
    inputs = job.inputs
    checks: list[GGUFCheck] = []
    f16_logprobs: list[Any] = []
    for type_name, (path, seconds) in made.items():
        job.step(f"verify {type_name}")
        is_base = type_name == out_type
        logprobs = job.timed(f"logits_{type_name}", gguf_logprobs, path, inputs.prompts, inputs.threads)
        if is_base:
            top1, kl = top1_agreement(reference_top1, top1_tokens(logprobs)), None
            f16_logprobs = logprobs
        else:
            top1 = top1_agreement(top1_tokens(f16_logprobs), top1_tokens(logprobs))
            kl = mean_kl(f16_logprobs, logprobs)
        del logprobs
        answer = job.timed(f"answer_{type_name}", answer_test_question, job.config, path, inputs.tokenizer,
                           inputs.end_of_turn, inputs.eot_id, inputs.seed_messages, inputs.threads)
        checks.append(GGUFCheck(
            type_name, path.name, path.stat().st_size, round(answer.bits_per_weight, 3),
            "merged HF model" if is_base else out_type, round(top1, 4), None if kl is None else round(kl, 5),
            answer.text, answer.tokens, answer.stopped_on_eos, round(seconds, 2),
        ))
        job.done()
    return checks, f16_logprobs


def _add_notes(job: ExportJob, checks: list[GGUFCheck], quant_types: list[str]) -> None:
    base_note = quantized_base_note(job.config, quant_types)
    if base_note:
        job.notes.append(base_note)
    for check in checks[1:]:
        if not check.stopped_on_eos:
            job.notes.append(f"{check.type}: the test answer hit the {job.config.export.answer_max_tokens}-token limit without EOS")


def _write_modelfile(job: ExportJob, checks: list[GGUFCheck], metadata: dict[str, Any]) -> tuple[str | None, str]:
    """gguf/Modelfile FROM the chosen file: (its name or None, how its TEMPLATE was made)."""
    if not job.config.export.ollama_modelfile:
        return None, "not written (export.ollama_modelfile: false)"
    wanted = choose_modelfile_type([c.type for c in checks], job.config.export.modelfile_type)
    chosen = next(c.file for c in checks if c.type == wanted)
    modelfile = build_modelfile(
        job.inputs.tokenizer, chosen, end_of_turn=job.inputs.end_of_turn,
        runtime_adds_bos=bool(metadata.get("runtime_adds_bos")), license_text=base_model_info(job.config)[2],
        others=[c.file for c in checks if c.file != chosen],
    )
    atomic_write_text(job.folder / job.run.modelfile.name, modelfile.text)
    return job.run.modelfile.name, modelfile.template


def _adapter_gguf(job: ExportJob, metadata: dict[str, Any], f16_logprobs: list[Any]):
    """The LoRA adapter as GGUF (export.adapter_gguf), or None."""
    config, inputs = job.config, job.inputs
    if not config.export.adapter_gguf:
        return None
    job.step("LoRA adapter as GGUF")
    modelfile_args = ({"end_of_turn": inputs.end_of_turn, "runtime_adds_bos": bool(metadata.get("runtime_adds_bos")),
                       "license_text": base_model_info(config)[2]} if config.export.ollama_modelfile else None)
    adapter = job.timed("adapter_gguf", export_adapter_gguf, config, job.run, job.folder, inputs.tokenizer,
                        f16_logprobs, inputs.prompts, inputs.threads, modelfile_args)
    job.done()
    return adapter
