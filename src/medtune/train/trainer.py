"""The train stage: LoRA supervised fine-tuning of the base model on the prepared data.

`train_adapter(config, run)` reads the run's prepared splits (`RunDir.data`), trains a PEFT LoRA
adapter with transformers' Trainer, checkpoints into `run.checkpoints` (adapter, optimizer,
scheduler, RNG, data position; `checkpoint_step(run)` says where a resume would continue), and
writes `run.adapter` atomically: the adapter (safetensors), the tokenizer (fixed pad token, chat
template), the resolved config, the JSONL training log, the loss curve and the adapter's answer to
the seed's test question. It returns a TrainResult; the pipeline records its figures.

On a GPU the defaults are bf16, packed padding-free micro-batches, FlashAttention-4 on Hopper and
Blackwell when flash-attn-4 is installed (else torch's varlen flash attention), Liger's fused loss
when installed, torch.compile, and each layer's q/k/v projections run as one GEMM group
(`medtune.train.fused_projections`); on CPU fp32 with padded batches.
`train.quantize_base: nf4` trains QLoRA (a bitsandbytes 4-bit base). Under `accelerate launch` /
`torchrun` the Trainer runs data parallel (`train.distributed: ddp`) or shards the base with
accelerate's FSDP plugin (`fsdp`); only the main process logs and writes outputs.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medtune.artifacts import atomic_dir, atomic_write_json
from medtune.config import LoraConfig, RunConfig, TrainConfig, save_resolved_config
from medtune.data.prepare import load_prepared
from medtune.errors import ConfigError, DataError
from medtune.modeling import load_base_model
from medtune.plots import plot_loss_curve
from medtune.rundir import RunDir
from medtune.tokenizer import load_tokenizer
from medtune.train.attention import attention_label, resolve_attention, warm_up_attention
from medtune.train.callbacks import JsonlLogger, RichProgress, gradient_guards, read_log
from medtune.train.fused_projections import fuse_projections, unfuse_projections
from medtune.train.packing import ExampleDataset, ExampleRows, PackedCollator, PackedDataset, PaddedCollator
from medtune.train.precision import Precision, resolve_precision
from medtune.train.probe import answer_test_question

TRAIN_SUMMARY = "train_summary.json"  # the stage's figures, inside the adapter folder
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class TrainPlan:
    """The runtime choices resolved from `train` settings and the hardware."""

    device_type: str
    precision: Precision
    packing: bool
    attention: str
    compile: bool
    liger: bool
    world_size: int = 1
    quantize_base: str = "none"
    fsdp: bool = False
    fused_projections: bool = False

    def describe(self) -> dict[str, Any]:
        return {
            "device": self.device_type,
            "precision": self.precision.name,
            "packing": self.packing,
            "attention": attention_label(self.attention),
            "compile": self.compile,
            "liger_kernels": self.liger,
            "fused_projections": self.fused_projections,
            "processes": self.world_size,
            "base_weights": "nf4 (QLoRA)" if self.quantize_base == "nf4" else self.precision.name,
            "distributed": ("fsdp" if self.fsdp else "ddp") if self.world_size > 1 else "none",
        }


def liger_kernel_config(plan: TrainPlan) -> dict[str, bool]:
    """Which of Liger's kernels to patch in (keyword arguments of its apply_liger_kernel_to_<model>).

    Under torch.compile only the fused linear cross-entropy: it never materialises the
    vocabulary-sized logits (the memory Liger saves). Liger's RMSNorm and SwiGLU Triton kernels fail
    Inductor's mutation analysis (they add Python floats with `.to`: "'float' object has no attribute
    'to'"), so Inductor assumes every input is mutated and copies them, and its own fused norm,
    SwiGLU and rotary kernels are faster than Liger's inside a compiled layer. One H200, Llama-3.2-1B
    shape, real tok/s within one call (BENCHMARKS.md, issue 14): Liger without RMSNorm (the previous
    default) 82.8k -> without SwiGLU too 84.6k -> without rotary too (this) 86.6k; in another call
    86.4k -> 90.4k; peak 23.0 GiB in each; Liger off 84.6k-85.0k at 34.2 GiB. Eager (no compile):
    every kernel Liger has for the model."""
    if plan.compile:
        return {"rms_norm": False, "swiglu": False, "rope": False}
    return {"rms_norm": True, "swiglu": True, "rope": True}


@dataclass
class TrainResult:
    """What the train stage made and measured."""

    adapter_dir: Path
    steps: int
    seconds: float
    tokens_seen: int
    train_loss: float | None
    val_loss: float | None
    first_val_loss: float | None
    test_answer: dict[str, Any] | None
    resumed_from_step: int | None
    plan: dict[str, Any] = field(default_factory=dict)

    def figures(self) -> dict[str, Any]:
        figures = {
            "steps": self.steps,
            "train_seconds": round(self.seconds, 2),
            "tokens_seen": self.tokens_seen,
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
            "first_val_loss": self.first_val_loss,
            "resumed_from_step": self.resumed_from_step,
            **{f"plan_{k}": v for k, v in self.plan.items()},
        }
        if self.test_answer:
            figures["test_answer_choice"] = self.test_answer.get("choice")
            figures["test_answer"] = self.test_answer.get("answer", "")[:200]
        return figures


# --------------------------------------------------------------------------- choices


def plan_training(train: TrainConfig, device_type: str | None = None, world_size: int | None = None) -> TrainPlan:
    """Resolve the auto settings: precision, packing, attention kernel, compile, Liger kernels, sharding.

    world_size: processes of the launcher (default: $WORLD_SIZE, 1 without a launcher).
    Raises ConfigError for combinations that cannot run (named by their train.* fields).
    """
    import importlib.util

    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    world_size = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
    precision = resolve_precision(train.precision, device_type)
    packing = train.packing == "on" or (train.packing == "auto" and device_type == "cuda")
    attention = resolve_attention(train.attention, device_type=device_type, packing=packing)
    fsdp = train.distributed == "fsdp" and world_size > 1
    if fsdp and device_type != "cuda":
        # accelerate enables its FSDP plugin for GPU (and other accelerator) process groups only.
        raise ConfigError("train.distributed: fsdp shards over GPUs (accelerate's FSDP plugin); on CPU use ddp")
    quantized = train.quantize_base == "nf4"
    if quantized and fsdp:
        raise ConfigError(
            "train.quantize_base: nf4 with train.distributed: fsdp is not supported (bitsandbytes' packed 4-bit "
            "weights are not sharded by FSDP2 here); a QLoRA 8B base fits one 24 GB GPU, so use distributed: ddp"
        )
    if quantized and precision.name == "fp16":
        raise ConfigError("train.quantize_base: nf4 computes in bf16 or fp32 here; set train.precision to bf16 or auto")
    if train.compile == "on" and (quantized or fsdp):
        raise ConfigError(
            f"train.compile: on is not supported with {'train.quantize_base: nf4' if quantized else 'train.distributed: fsdp'}"
            " (bitsandbytes' 4-bit matmuls and FSDP's parameter hooks are not traced by medtune's regional compile); "
            "use auto or off"
        )
    # auto compiles packed GPU training; not a QLoRA or FSDP model (see above).
    compile_on = train.compile == "on" or (
        train.compile == "auto" and device_type == "cuda" and packing and not quantized and not fsdp
    )
    liger_installed = importlib.util.find_spec("liger_kernel") is not None
    if train.liger_kernels == "on" and not liger_installed:
        raise ConfigError("train.liger_kernels: on, but liger-kernel is not installed (pip install liger-kernel)")
    liger = device_type == "cuda" and train.liger_kernels != "off" and liger_installed
    if train.fused_projections == "on" and fsdp:
        raise ConfigError(
            "train.fused_projections: on is not supported with train.distributed: fsdp (the fused forward is not "
            "checked against FSDP's sharded parameters); use auto or off"
        )
    # auto: with compile, where the fused groups were measured (BENCHMARKS.md, issue 14).
    fused = train.fused_projections == "on" or (train.fused_projections == "auto" and compile_on)
    return TrainPlan(device_type, precision, packing, attention, compile_on, liger, world_size, train.quantize_base,
                     fsdp, fused)


def compile_regions(model) -> int:
    """torch.compile each decoder layer in place, and the loss; returns the number of layers compiled.

    Regional compilation: one layer's graph is traced once and reused for every layer (seconds
    instead of minutes for the whole model), the modules stay the same objects (PEFT saving,
    DDP hooks and checkpoints are unaffected), and the fp32 upcast + cross-entropy over the
    vocabulary fuse into a few kernels instead of materialising fp32 logits.
    """
    layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    for layer in layers:
        layer.compile()
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner.loss_function = torch.compile(inner.loss_function)
    return len(layers)


def uncompile_regions(model) -> None:
    """Undo `compile_regions`: decoder layers run eagerly again (nn.Module.compile has no public undo),
    with transformers' own attention and MLP forwards (generation caches keys and values)."""
    for module in model.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if "_loss_function" in vars(inner):
        del inner._loss_function
    unfuse_projections(model)


def prepare_lora_model(model, lora: LoraConfig):
    """Wrap `model` with a fresh LoRA adapter (trainable weights fp32, base frozen)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    model.config.use_cache = False
    peft_config = PeftLoraConfig(
        task_type="CAUSAL_LM",
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        bias="none",
    )
    try:
        return get_peft_model(model, peft_config, autocast_adapter_dtype=True)
    except ValueError as exc:
        raise ConfigError(f"lora.target_modules: {exc}") from exc


# --------------------------------------------------------------------------- the Trainer


def _trainer_class():
    from transformers import Trainer

    class MedtuneTrainer(Trainer):
        """transformers' Trainer plus a count of real (non-pad) tokens trained on, and logits only
        where there is a label.

        Collators add `num_real_tokens` to each batch; it is removed here before the forward and
        summed over processes at each log and checkpoint into `state.num_input_tokens_seen`, which
        checkpoints carry across a resume.

        `labels_only_logits`: the model projects onto the vocabulary only the positions whose next
        token is trained on (transformers' boolean `logits_to_keep`, the targets passed as
        `shift_labels`), not the prompt's. Same loss and gradients; on the demo's chats three
        positions in four are prompt, and the vocabulary projection and its softmax are a fifth of a
        small model's compute.
        """

        _pending_tokens = 0
        labels_only_logits = False

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.get("labels")
            if self.labels_only_logits and labels is not None and not return_outputs:
                targets = torch.nn.functional.pad(labels, (0, 1), value=-100)[..., 1:]
                keep = targets != -100
                inputs = {**inputs, "logits_to_keep": keep, "shift_labels": targets[keep]}
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

        def _prepare_inputs(self, inputs):
            count = inputs.pop("num_real_tokens", 0)
            if self.model.training:
                self._pending_tokens += int(count)
            return super()._prepare_inputs(inputs)

        def real_tokens_trained(self) -> int:
            """Real tokens trained on so far by this process's view: the recorded count (all
            processes, at the last log or checkpoint) plus this process's tokens since then."""
            return int(self.state.num_input_tokens_seen or 0) + self._pending_tokens

        def _flush_tokens(self) -> None:
            local = self._pending_tokens
            self._pending_tokens = 0
            if self.args.world_size > 1:
                total = torch.tensor([local], device=self.args.device, dtype=torch.long)
                local = int(self.accelerator.reduce(total, reduction="sum").item())
            self.state.num_input_tokens_seen = int(self.state.num_input_tokens_seen or 0) + local

        def log(self, logs, start_time=None):
            if "loss" in logs:
                self._flush_tokens()
                logs["real_tokens"] = self.state.num_input_tokens_seen
            super().log(logs, start_time)

        def _save_checkpoint(self, model, trial):
            self._flush_tokens()
            super()._save_checkpoint(model, trial)

    return MedtuneTrainer


def build_trainer(
    model,
    train_data: Any,
    eval_data: Any | None,
    *,
    train: TrainConfig,
    plan: TrainPlan,
    seed: int,
    output_dir: Path,
    pad_token_id: int,
    callbacks: list | None = None,
    eval_on_start: bool = False,
    trainer_arguments: dict[str, Any] | None = None,
):
    """A Trainer for the PEFT `model` on tokenized examples (rows with input_ids and labels).

    `train_data`/`eval_data`: a `datasets.Dataset` or a list of dicts. Packed plans group them
    into token-budget micro-batches (one per device per step); unpacked plans pad `batch_size`
    examples. `trainer_arguments`: TrainingArguments fields that override medtune's choices (the
    benchmarks' on/off measurements). Raises DataError when the training data is empty.
    """
    from transformers import TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    train_set, eval_set, collator, per_device = _batches(train_data, eval_data, train, plan, seed, pad_token_id)
    has_eval = eval_set is not None and len(eval_set) > 0
    arguments = _training_arguments(model, train, plan, seed, output_dir, per_device, has_eval, eval_on_start)
    arguments.update(trainer_arguments or {})
    args = TrainingArguments(**arguments)
    # Packed rows are single sequences: only a launcher (torchrun / accelerate) spreads work over
    # GPUs. Without one, transformers would wrap the model in DataParallel over every visible GPU.
    if args.device.type == "cuda" and args.n_gpu > 1:
        args._n_gpu = 1
    if plan.fused_projections:
        report = fuse_projections(model)
        for skipped in report.skipped:
            print(f"train.fused_projections: {skipped}; that block runs unfused", file=sys.stderr)
    if plan.compile:
        compile_regions(model)
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set if has_eval else None,
        data_collator=collator,
        callbacks=list(callbacks or []),
    )
    if plan.fsdp and not getattr(trainer, "is_fsdp_enabled", False):
        raise ConfigError("train.distributed: fsdp, but accelerate did not set up FSDP (is accelerate >= 1.10 installed?)")
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    # Padded batches only: Liger's fused loss already skips the full logits, and packed batches go
    # through flash-attention kwargs this path is not checked with.
    trainer.labels_only_logits = not plan.packing and not plan.liger and accepts_logits_to_keep(model)
    return trainer


def _batches(train_data: Any, eval_data: Any | None, train: TrainConfig, plan: TrainPlan, seed: int, pad_token_id: int):
    """(train set, eval set or None, collator, examples per device): packed token-budget
    micro-batches, or padded batches of train.batch_size examples. Raises DataError when the
    training data is empty."""
    train_rows = ExampleRows(train_data)
    if len(train_rows) == 0:
        raise DataError("the training split is empty; check the prepare stage's report")
    if plan.packing:
        train_set = PackedDataset(train_rows, train.max_tokens_per_batch, seed)
        eval_set = PackedDataset(ExampleRows(eval_data), train.max_tokens_per_batch, seed) if eval_data else None
        return train_set, eval_set, PackedCollator(), 1
    train_set = ExampleDataset(train_rows)
    eval_set = ExampleDataset(ExampleRows(eval_data)) if eval_data else None
    return train_set, eval_set, PaddedCollator(pad_token_id), train.batch_size


def run_bookkeeping_arguments(save_steps: int, save_total_limit: int | None, seed: int) -> dict[str, Any]:
    """What every medtune trainer (SFT here, GRPO in medtune.rl) asks of transformers' Trainer alike:
    a resumable checkpoint every `save_steps`, no outside loggers or tqdm (medtune logs itself), and
    the run's seed for initialisation and data order."""
    return dict(save_strategy="steps", save_steps=save_steps, save_total_limit=save_total_limit,
                report_to="none", disable_tqdm=True, seed=seed, data_seed=seed)


def _training_arguments(
    model, train: TrainConfig, plan: TrainPlan, seed: int, output_dir: Path, per_device: int, has_eval: bool,
    eval_on_start: bool,
) -> dict[str, Any]:
    """TrainingArguments fields for medtune's choices (before a benchmark's overrides)."""
    from transformers import TrainingArguments

    if train.optimizer == "adafactor":
        optim = "adafactor"
    else:
        optim = "adamw_torch_fused" if plan.device_type == "cuda" else "adamw_torch"
    on_gpu = plan.device_type == "cuda"
    return dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=per_device,
        per_device_eval_batch_size=per_device,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        num_train_epochs=train.epochs,
        max_steps=train.max_steps or -1,
        learning_rate=train.learning_rate,
        lr_scheduler_type=train.lr_scheduler,
        warmup_steps=train.warmup_ratio,  # < 1 reads as a share of the steps
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        optim=optim,
        **plan.precision.trainer_flags(),
        logging_steps=train.logging_steps,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=train.eval_steps,
        eval_on_start=eval_on_start and has_eval,
        prediction_loss_only=True,
        **run_bookkeeping_arguments(train.save_steps, train.save_total_limit, seed),
        dataloader_num_workers=train.dataloader_workers,
        dataloader_pin_memory=on_gpu,
        # Pinned batches copied without blocking: the host builds the next micro-batch while the
        # GPU still runs the last backward, instead of waiting for it at every copy.
        **({"accelerator_config": {"non_blocking": True}} if on_gpu else {}),
        remove_unused_columns=False,
        label_names=["labels"],
        use_cpu=plan.device_type == "cpu",
        use_liger_kernel=plan.liger,
        **({"liger_kernel_config": liger_kernel_config(plan)} if plan.liger else {}),
        ddp_find_unused_parameters=False,
        # The NaN/Inf filter reads every micro-batch's loss on the host (a GPU sync per micro-batch)
        # and hides bad losses from the log; off, a NaN shows in the log as it is.
        logging_nan_inf_filter=False,
        **(fsdp_arguments(model, train.gradient_checkpointing) if plan.fsdp
           else _checkpointing_args(TrainingArguments, train.gradient_checkpointing)),
    )


def accepts_logits_to_keep(model) -> bool:
    """Whether the (PEFT-wrapped) causal LM's forward takes `logits_to_keep` (transformers' LMs do)."""
    import inspect

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def decoder_layer_classes(model) -> list[str]:
    """Class names of the model's decoder layers (the units FSDP shards and gathers one at a time)."""
    return sorted({type(m).__name__ for m in model.modules() if type(m).__name__.endswith("DecoderLayer")})


def fsdp_arguments(model, gradient_checkpointing: bool) -> dict[str, Any]:
    """TrainingArguments fields that hand the model to accelerate's FSDP plugin.

    FSDP2 (`fully_shard`), one unit per decoder layer, full state dict on save (so the adapter and
    checkpoints are ordinary files), activation checkpointing through FSDP's own wrapper.
    Raises ConfigError when the model has no recognisable decoder layers.
    """
    layers = decoder_layer_classes(model)
    if not layers:
        raise ConfigError("train.distributed: fsdp needs a model with *DecoderLayer blocks to shard; use ddp")
    config: dict[str, Any] = {
        "version": 2,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "transformer_layer_cls_to_wrap": layers,
        "state_dict_type": "FULL_STATE_DICT",
        "reshard_after_forward": True,
        "cpu_ram_efficient_loading": False,
    }
    if gradient_checkpointing:
        config["activation_checkpointing"] = True
    from transformers import TrainingArguments

    # transformers >= 5.2x takes fsdp=True with everything in fsdp_config; earlier 5.x the option string.
    switch = True if hasattr(TrainingArguments, "_apply_legacy_fsdp_to_config") else "full_shard auto_wrap"
    return {"fsdp": switch, "fsdp_config": config}


def _checkpointing_args(arguments_class, enabled: bool) -> dict[str, Any]:
    """Activation checkpointing switch under its name in this transformers version (renamed in 5.2x)."""
    if not enabled:
        return {}
    name = "activation_checkpointing" if "activation_checkpointing" in arguments_class.__dataclass_fields__ else "gradient_checkpointing"
    return {name: True, f"{name}_kwargs": {"use_reentrant": False}}


# --------------------------------------------------------------------------- the stage


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint (trainer_state.json is written last) under `folder`."""
    if not Path(folder).is_dir():
        return None
    found = []
    for child in Path(folder).iterdir():
        match = _CHECKPOINT_RE.match(child.name)
        if match and (child / "trainer_state.json").is_file():
            found.append((int(match.group(1)), child))
    return max(found)[1] if found else None


def checkpoint_step(run: RunDir, folder: Path | None = None) -> int | None:
    """The optimizer step of the newest complete checkpoint in the run's checkpoints folder (or
    `folder`, e.g. the rl stage's), the one a resume continues from (None when there is none)."""
    checkpoint = latest_checkpoint(folder or run.checkpoints)
    return int(_CHECKPOINT_RE.match(checkpoint.name).group(1)) if checkpoint else None


def resume_message(step: int | None) -> str:
    """What a resumed attempt says before it starts (the pipeline and the train stage say the same)."""
    return f"resuming from step {step}" if step is not None else "no checkpoint yet, starting over"


def load_prepared_splits(run: RunDir) -> tuple[Any, Any | None]:
    """The prepare stage's tokenized train and val splits (datasets with input_ids and labels; val is
    None with data.val_size: 0). Raises ArtifactError when prepare has not completed."""
    splits = load_prepared(run)
    return splits["train"], splits.get("val")


def _subset(data: Any, limit: int | None, seed: int) -> Any:
    if data is None or limit is None or len(data) <= limit:
        return data
    indices = sorted(random.Random(seed).sample(range(len(data)), limit))
    return data.select(indices) if hasattr(data, "select") else [data[i] for i in indices]


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def train_adapter(
    config: RunConfig, run: RunDir, *, resume: bool = False, callbacks: Sequence[Any] = ()
) -> TrainResult:
    """Train a LoRA adapter on the run's prepared data and write its adapter folder.

    resume: continue from the newest complete checkpoint in the run's checkpoints folder (a fresh
    start when there is none). callbacks: extra transformers TrainerCallbacks (e.g. StopAtStep in
    tests). Raises ArtifactError (no prepared data), ModelError (base model), ConfigError
    (impossible settings for this hardware), DataError (empty split).
    """
    started = time.perf_counter()
    train_data, val_data = load_prepared_splits(run)
    val_data = _subset(val_data, config.train.eval_max_examples, config.seed)
    _check_lengths(train_data, config.train)
    plan = plan_training(config.train)
    checkpoint = _resume_point(run, resume)
    resume_step = checkpoint_step(run) if checkpoint else None
    _say(f"train: {resume_message(resume_step) if resume else 'starting'}; attention: {plan.describe()['attention']}")
    model, tokenizer = _load_lora_model(config, plan)
    trainer = build_trainer(
        model, train_data, val_data, train=config.train, plan=plan, seed=config.seed, output_dir=run.checkpoints,
        pad_token_id=tokenizer.pad_token_id, eval_on_start=checkpoint is None,
        callbacks=[JsonlLogger(_live_log(run), resume_step), RichProgress(), *callbacks,
                   *gradient_guards("train", f"Lower train.learning_rate ({config.train.learning_rate:g} now) and run again.",
                                    fp16=plan.precision.name == "fp16")],
    )
    _warm_up_attention(plan, model)
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    _evaluate_last_step(trainer)
    # Under FSDP every process holds a shard: gathering the adapter and generating are collective.
    state_dict = trainer.accelerator.get_state_dict(trainer.model) if plan.fsdp else None
    answer = _answer_test_question(config, plan, trainer, model, tokenizer)
    result = _train_result(run, trainer, plan, answer, resume_step, time.perf_counter() - started)
    if trainer.is_world_process_zero():
        _write_adapter_folder(config, run, result, model, tokenizer, state_dict)
    return result


def _say(message: str) -> None:
    if _is_main_process():
        print(message, file=sys.stderr)


def _resume_point(run: RunDir, resume: bool) -> Path | None:
    """The checkpoint to continue from; a fresh start removes another attempt's checkpoints."""
    if resume:
        return latest_checkpoint(run.checkpoints)
    if _is_main_process() and run.checkpoints.exists():
        shutil.rmtree(run.checkpoints)  # a fresh run must not pick up another run's checkpoints
    return None


def _live_log(run: RunDir) -> Path:
    """The training log while training runs: beside the checkpoints, so a resume keeps it; the
    finished adapter folder gets a copy."""
    return run.checkpoints / run.train_log.name


def _load_lora_model(config: RunConfig, plan: TrainPlan):
    """The base model (seeded, in the plan's dtype and attention kernel) wrapped with a fresh LoRA
    adapter, and its tokenizer."""
    from transformers import set_seed  # heavy: transformers is imported by the stage only

    set_seed(config.seed)  # the LoRA initialisation too: a run is reproducible from its config
    tokenizer = load_tokenizer(config.model)
    base = load_base_model(
        config.model,
        dtype=plan.precision.model_dtype,
        attn_implementation=plan.attention,
        quantize=plan.quantize_base,
        device=_load_device(plan),
    )
    base.config.pad_token_id = tokenizer.pad_token_id
    return prepare_lora_model(base, config.lora), tokenizer


def _warm_up_attention(plan: TrainPlan, model) -> None:
    """Pay the attention kernel's one-time compile (FlashAttention-4 compiles per head shape at its
    first call) before the first timed step, and say how long it took."""
    seconds = warm_up_attention(plan.attention, model, plan.precision.model_dtype)
    if seconds is not None:
        _say(f"train: {attention_label(plan.attention)} compiled in {seconds:.1f} s (once, before the first step)")


def _evaluate_last_step(trainer) -> None:
    # Decided from the Trainer's own history, identical on every process: evaluation is collective.
    evaluated = [r["step"] for r in trainer.state.log_history if "eval_loss" in r]
    if trainer.eval_dataset is not None and (not evaluated or evaluated[-1] != trainer.state.global_step):
        trainer.evaluate()


def _answer_test_question(config: RunConfig, plan: TrainPlan, trainer, model, tokenizer) -> dict[str, Any] | None:
    """The adapter's answer to the seed's test question (main process; every process under FSDP)."""
    if not config.train.test_question or not (plan.fsdp or trainer.is_world_process_zero()):
        return None
    uncompile_regions(model)  # generation's shapes change every token: eager is faster here
    if plan.attention != "sdpa":
        model.base_model.model.set_attn_implementation("sdpa")  # generation is unpacked
    return answer_test_question(
        model, tokenizer, system_prompt=config.data.system_prompt, max_new_tokens=config.train.test_question_max_new_tokens
    )


def _train_result(run: RunDir, trainer, plan: TrainPlan, answer, resume_step: int | None, seconds: float) -> TrainResult:
    main = trainer.is_world_process_zero()
    records = read_log(_live_log(run)) if main else []
    losses = [r["loss"] for r in records if "loss" in r]
    val_losses = [r["eval_loss"] for r in records if "eval_loss" in r]
    return TrainResult(
        adapter_dir=run.adapter,
        steps=trainer.state.global_step,
        seconds=seconds,
        tokens_seen=int(trainer.state.num_input_tokens_seen or 0),
        train_loss=losses[-1] if losses else None,
        val_loss=val_losses[-1] if val_losses else None,
        first_val_loss=val_losses[0] if val_losses else None,
        test_answer=answer if main else None,
        resumed_from_step=resume_step,
        plan=plan.describe(),
    )


def _write_adapter_folder(config: RunConfig, run: RunDir, result: TrainResult, model, tokenizer, state_dict) -> None:
    """The adapter folder, atomically: adapter, tokenizer, resolved config, log, loss plot, test answer, summary."""
    log = _live_log(run)
    with atomic_dir(run.adapter) as out:
        model.save_pretrained(out, safe_serialization=True, **({"state_dict": state_dict} if state_dict else {}))
        tokenizer.save_pretrained(out)
        save_resolved_config(config, out / run.config_file.name)
        shutil.copyfile(log, out / run.train_log.name)
        plot_loss_curve(read_log(log), out / run.loss_curve.name, title=f"{config.name}: LoRA fine-tuning")
        if result.test_answer is not None:
            atomic_write_json(out / run.test_answer.name, result.test_answer)
        atomic_write_json(out / TRAIN_SUMMARY, {**result.figures(), "adapter_dir": str(result.adapter_dir)})


def _load_device(plan: TrainPlan) -> str:
    """Where the base is loaded: this process's GPU for a 4-bit base (bitsandbytes quantizes on the
    device it loads to), else CPU and the Trainer moves it."""
    if plan.quantize_base == "nf4" and plan.device_type == "cuda":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def _check_lengths(train_data: Any, train_cfg: TrainConfig) -> None:
    if hasattr(train_data, "column_names") and "length" in train_data.column_names and len(train_data):
        longest = max(train_data["length"])
        if longest > train_cfg.max_tokens_per_batch and train_cfg.packing != "off":
            raise ConfigError(
                f"train.max_tokens_per_batch ({train_cfg.max_tokens_per_batch}) is smaller than the longest "
                f"training example ({longest} tokens); raise it to at least data.max_length"
            )
