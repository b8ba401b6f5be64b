"""The systems compared, one function each (`run_<system>(args, row) -> row`), on the shared workload:
medtune at its shipped defaults (its public trainer API), Unsloth and plain TRL (SFTTrainer), and
the seed recipe. Each fills the row with its timed window, peak memory and held-out loss."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medtune.config import LoraConfig, ModelConfig, TrainConfig
from medtune.modeling import load_base_model, quantize_nf4_in_place
from medtune.train.attention import warm_up_attention
from medtune.train.measure import SEED_MAX_LENGTH, StepTimer, count_params, seed_recipe_rows
from medtune.train.trainer import build_trainer, plan_training, prepare_lora_model, uncompile_regions

from .profiler import StepProfiler
from .workload import (
    LEARNING_RATE,
    SEED,
    CountingCollator,
    device_for,
    full_param_count,
    heldout_loss,
    llama_config,
    log,
    lora_shape,
    micro_batch_tokens,
    peak_gib,
    reset_peak,
    special_ids,
    workload,
)

# --------------------------------------------------------------------------- (a) medtune


def timed_training(trainer, timer, row: dict) -> None:
    """Train, recording wall time, the timed window's seconds and real tokens, and peak memory, the same
    way for every system compared."""
    reset_peak()
    started = time.perf_counter()
    trainer.train()
    row["wall_train_s"] = round(time.perf_counter() - started, 1)
    seconds, tokens = timer.window()
    row.update(seconds=seconds, timed_real_tokens=tokens, peak_gib=round(peak_gib(), 2))


def json_settings(items: list[str]) -> dict:
    """NAME=JSON options (--trainer-arg, --inductor) as a dict of parsed values."""
    return {key: json.loads(value) for key, value in (item.split("=", 1) for item in items)}


def medtune_base(args, plan, device: torch.device):
    """The base model as medtune loads it: the shared base folder, or an in-memory random base of
    --shape (the 3B/8B rows: no 16 GB written to disk), 4-bit when the plan says nf4."""
    if args.base:
        return load_base_model(ModelConfig(base=args.base), dtype=plan.precision.model_dtype,
                               attn_implementation=plan.attention, quantize=plan.quantize_base, device=str(device))
    from transformers import AutoModelForCausalLM

    torch.manual_seed(SEED)
    with torch.device(device):
        base = AutoModelForCausalLM.from_config(llama_config(args.shape), dtype=plan.precision.model_dtype,
                                                attn_implementation=plan.attention)
    if plan.quantize_base == "nf4":
        quantize_nf4_in_place(base, plan.precision.model_dtype)
    return base


def apply_ablations(args, model) -> None:
    """The on/off measurements that change medtune's model rather than a setting."""
    if args.no_input_cast:
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in model.modules():
            if isinstance(module, BaseTunerLayer):
                module.cast_input_dtype_enabled = False
    if args.fuse_frozen_mlp:  # the frozen gate/up pair as one GEMM as well
        import functools

        import medtune.train.trainer as trainer_module

        trainer_module.fuse_projections = functools.partial(trainer_module.fuse_projections, frozen_mlp=True)


def run_medtune(args, row: dict) -> dict:
    device = device_for(args)
    fields = {
        "max_steps": args.warmup + args.steps,
        "save_steps": 10**6,
        "logging_steps": args.warmup + args.steps,
        "max_tokens_per_batch": micro_batch_tokens(args),
        "gradient_accumulation_steps": args.accumulation,
        "learning_rate": LEARNING_RATE,
        "quantize_base": args.quantize,
        **({"packing": "on"} if args.tiny else {}),
        **{k: v for k, v in (item.split("=", 1) for item in args.set)},
    }
    train_cfg = TrainConfig.model_validate(fields)
    plan = plan_training(train_cfg, device_type=device.type)
    row["plan"] = plan.describe()
    log(f"  plan: {row['plan']}")
    reset_peak()
    base = medtune_base(args, plan, device)
    row["n_params"] = full_param_count(base.config)
    row["weights_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2) if device.type == "cuda" else None
    lora = lora_shape(args)
    torch.manual_seed(SEED)
    model = prepare_lora_model(base, LoraConfig(**lora))
    apply_ablations(args, model)
    train, heldout = workload(args, base.config.vocab_size)
    examples = [{"input_ids": t, "labels": t} for t in train]
    holder: dict = {}
    timer = StepTimer(args.warmup, args.steps, lambda: holder["trainer"].real_tokens_trained(), log)
    callbacks = [timer]
    profiler = None
    if args.profile:
        # The last warm-up step (compiled by then, outside the timed window): the token budget stays equal.
        # Before the timer: the profiler's trace processing ends before the window's start is taken.
        profiler = StepProfiler(args.warmup, lora["r"])
        callbacks.insert(0, profiler)
    # on/off measurements of Trainer switches, e.g. logging_nan_inf_filter=true
    overrides = json_settings(args.trainer_arg)
    if args.inductor:
        import torch._inductor.config as inductor_config

        for key, value in json_settings(args.inductor).items():
            if not hasattr(inductor_config, key):
                raise SystemExit(f"--inductor {key}: torch._inductor.config has no such setting")
            setattr(inductor_config, key, value)
    trainer = build_trainer(model, examples, None, train=train_cfg, plan=plan, seed=SEED,
                            output_dir=Path(tempfile.mkdtemp(prefix="medtune-peers-")),
                            pad_token_id=special_ids(args.tiny)[2], callbacks=callbacks, trainer_arguments=overrides)
    holder["trainer"] = trainer
    # FlashAttention-4 compiles per head shape at its first call: paid here, before the timed steps.
    row["attention_warmup_s"] = warm_up_attention(plan.attention, model, plan.precision.model_dtype)
    timed_training(trainer, timer, row)
    row.update(real_tokens_trained=trainer.real_tokens_trained(),
               pack_fill=round(trainer.train_dataset.fill(train_cfg.max_tokens_per_batch), 4),
               settings=dict(fields, lora=args.lora, dropout=lora["dropout"], trainer_args=args.trainer_arg,
                             **({"inductor": args.inductor} if args.inductor else {}),
                             **({"fuse_frozen_mlp": True} if args.fuse_frozen_mlp else {})))
    if profiler is not None:
        row["_profiler"] = profiler  # summarised after this row is safely written (see run)
    if not args.no_heldout:
        uncompile_regions(model)  # 24 different lengths: eager beats a recompile per shape
        row["loss_at_equal_tokens"] = heldout_loss(model, heldout, device)
    return row


# --------------------------------------------------------------------------- (b) Unsloth, (c) plain TRL


def _sft_config(args, output_dir: str, packing_off: int | None = None):
    """SFTConfig shared by the TRL-based arms; packing_off=N: padding-free batches of N examples, no packing."""
    from trl import SFTConfig

    return SFTConfig(
        output_dir=output_dir,
        per_device_train_batch_size=packing_off or 1,
        gradient_accumulation_steps=args.accumulation,
        max_steps=args.warmup + args.steps,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch_fused" if not args.tiny else "adamw_torch",
        bf16=not args.tiny,
        logging_steps=args.warmup + args.steps,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=SEED,
        data_seed=SEED,
        max_length=micro_batch_tokens(args),
        packing=not packing_off,
        packing_strategy="bfd",
        padding_free=True,
        dataset_num_proc=None,
        dataloader_num_workers=0,
        use_cpu=args.tiny,
    )


def _train_peer(args, row: dict, model, tokenizer, trainer_factory) -> dict:
    """Shared part of the TRL-based arms: dataset, trainer, timing, held-out loss."""
    from datasets import Dataset

    device = device_for(args)
    train, heldout = workload(args, model.config.vocab_size)
    dataset = Dataset.from_dict({"input_ids": [t.tolist() for t in train]})
    trainer = trainer_factory(dataset)
    counter = CountingCollator(trainer.data_collator, special_ids(args.tiny)[2])
    trainer.data_collator = counter
    timer = StepTimer(args.warmup, args.steps, lambda: counter.real, log)
    trainer.add_callback(timer)
    row["packed_rows"] = len(trainer.train_dataset)
    timed_training(trainer, timer, row)
    row.update(real_tokens_trained=counter.trained(trainer.state.global_step * args.accumulation))
    if not args.no_heldout:
        os.environ["UNSLOTH_RETURN_LOGITS"] = "1"  # Unsloth skips logits in training forwards; the held-out loss needs them
        row["loss_at_equal_tokens"] = heldout_loss(model, heldout, device)
    return row


def run_unsloth(args, row: dict) -> dict:
    if args.tiny:
        raise SystemExit("the unsloth arm needs a GPU (its CPU backend is a different code path)")
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    os.chdir(tempfile.mkdtemp(prefix="unsloth-"))  # its compiled-module cache is written to the cwd
    import unsloth  # noqa: F401  (first: it patches transformers, PEFT and TRL on import)
    from unsloth import FastLanguageModel

    lora = lora_shape(args)
    checkpointing = {"off": False, "on": True, "unsloth": "unsloth"}[args.unsloth_checkpointing]
    reset_peak()
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=args.base, max_seq_length=micro_batch_tokens(args), dtype=torch.bfloat16, load_in_4bit=args.quantize == "nf4",
        load_in_16bit=args.quantize != "nf4", load_in_8bit=False, full_finetuning=False, fix_tokenizer=False, use_exact_model_name=True,
        use_gradient_checkpointing=checkpointing,
    )
    row["n_params"] = full_param_count(model.config)
    row["weights_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2)
    model = FastLanguageModel.get_peft_model(
        model, r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
        target_modules=lora["target_modules"], bias="none", use_gradient_checkpointing=checkpointing,
        random_state=SEED, max_seq_length=micro_batch_tokens(args),
    )
    from trl import SFTTrainer

    row["settings"] = dict(lora=args.lora, dropout=lora["dropout"],
                           gradient_checkpointing=args.unsloth_checkpointing, packing="TRL bfd + Unsloth padding-free",
                           max_length=micro_batch_tokens(args), accumulation=args.accumulation, optim="adamw_torch_fused")

    def factory(dataset):
        try:
            return SFTTrainer(model=model, processing_class=tokenizer, train_dataset=dataset,
                              args=_sft_config(args, tempfile.mkdtemp(prefix="unsloth-out-")))
        except Exception as exc:  # noqa: BLE001
            # Its other padding-free mode: examples concatenated per micro-batch, no packing
            # step; ~16k tokens per micro-batch at the mix's mean length of 528.
            log(f"  Unsloth with packing failed ({type(exc).__name__}: {exc}); padding-free without packing")
            per_batch = max(1, micro_batch_tokens(args) // 528)
            row["settings"].update(packing=f"none: padding-free, {per_batch} examples per micro-batch",
                                   packing_error=f"{type(exc).__name__}: {exc}"[:500])
            return SFTTrainer(model=model, processing_class=tokenizer, train_dataset=dataset,
                              args=_sft_config(args, tempfile.mkdtemp(prefix="unsloth-out-"), packing_off=per_batch))
    return _train_peer(args, row, model, tokenizer, factory)


def run_trl(args, row: dict) -> dict:
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    device = device_for(args)
    lora = lora_shape(args)
    reset_peak()
    model = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.bfloat16 if not args.tiny else torch.float32,
                                                 attn_implementation=args.trl_attention).to(device)
    row["n_params"] = count_params(model)
    tokenizer = AutoTokenizer.from_pretrained(args.base)
    row["packing_check"] = packing_check(model, workload(args, model.config.vocab_size)[0][:6], device)
    log(f"  packing check (position_ids only, as TRL's padding-free collator feeds it): {row['packing_check']}")
    peft_config = LoraConfig(task_type="CAUSAL_LM", r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                             target_modules=lora["target_modules"], bias="none")

    holder = {}

    def factory(dataset):
        holder["t"] = SFTTrainer(model=model, processing_class=tokenizer, train_dataset=dataset, peft_config=peft_config,
                                 args=_sft_config(args, tempfile.mkdtemp(prefix="trl-out-")))
        return holder["t"]

    row["settings"] = dict(lora=args.lora, dropout=lora["dropout"], attention=args.trl_attention, packing="bfd, padding-free",
                           max_length=micro_batch_tokens(args), accumulation=args.accumulation, optim="adamw_torch_fused")
    row = _train_peer(args, row, model, tokenizer, factory)
    return row


@torch.no_grad()
def packing_check(model, examples: list[np.ndarray], device: torch.device) -> dict:
    """Logits of a packed row (restarting position_ids, no mask: what a padding-free collator feeds)
    vs the same examples run alone: a relative error near bf16 rounding (~1e-2) means the attention
    keeps examples apart; examples attending to each other give a far larger one.
    """
    model.eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    ids = torch.as_tensor(np.concatenate(examples), device=device)[None]
    positions = torch.as_tensor(np.concatenate([np.arange(len(t)) for t in examples]), device=device)[None]
    num, den, start = 0.0, 0.0, 0
    with autocast:
        packed = model(input_ids=ids, position_ids=positions).logits[0].float()
        for tokens in examples:
            alone = model(input_ids=torch.as_tensor(tokens, device=device)[None]).logits[0].float()
            num += float((packed[start:start + len(tokens)] - alone).norm() ** 2)
            den += float(alone.norm() ** 2)
            start += len(tokens)
    model.train()
    return {"packed_vs_alone_logits_rel_err": (num / den) ** 0.5}


# --------------------------------------------------------------------------- (d) the seed recipe


def run_seed(args, row: dict) -> dict:
    """The seed's script on the shared base: fp16 weights, Trainer(fp16=True), Adafactor, pad/truncate 512, 4 x 4."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, default_data_collator

    device = device_for(args)
    reset_peak()
    model = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float16 if not args.tiny else torch.float32).to(device)
    row["n_params"] = count_params(model)
    train, heldout = workload(args, model.config.vocab_size)
    pad = special_ids(args.tiny)[1]  # the seed pads with EOS
    rows = seed_recipe_rows(train, pad)
    lora = lora_shape(args)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=lora["r"], lora_alpha=lora["alpha"],
                                             lora_dropout=lora["dropout"], target_modules=lora["target_modules"]))
    # The same real-token budget as the other arms' optimizer steps.
    per_step = 16 * float(np.minimum([len(t) for t in train], SEED_MAX_LENGTH).mean())
    budget = (args.warmup + args.steps) * args.accumulation * micro_batch_tokens(args) * args.budget_fill
    total_steps = max(int(math.ceil(budget / per_step)), args.warmup + 2)
    warmup = min(10, total_steps // 4)
    counter = CountingCollator(default_data_collator, pad)
    timer = StepTimer(warmup, total_steps - warmup, lambda: counter.real, log)
    training_args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="seed-peers-"), per_device_train_batch_size=4, gradient_accumulation_steps=4,
        learning_rate=LEARNING_RATE, fp16=not args.tiny, optim="adafactor", max_steps=total_steps, save_strategy="no",
        report_to="none", disable_tqdm=True, seed=SEED, use_cpu=args.tiny, logging_steps=total_steps,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=rows, data_collator=counter, callbacks=[timer])
    reset_peak()
    started = time.perf_counter()
    trainer.train()
    row["wall_train_s"] = round(time.perf_counter() - started, 1)
    seconds, tokens = timer.window()
    row.update(seconds=seconds, timed_real_tokens=tokens, peak_gib=round(peak_gib(), 2),
               real_tokens_trained=counter.trained(total_steps * 4),
               settings={"steps": total_steps, "timed_steps": total_steps - warmup, "dropout": lora["dropout"],
                         "recipe": "HF Trainer, fp16 weights + fp16=True, Adafactor, pad/truncate 512, 4 x 4, labels = input ids"})
    if not args.no_heldout:
        row["loss_at_equal_tokens"] = heldout_loss(model, heldout, device)
    return row



SYSTEMS = {"medtune": run_medtune, "unsloth": run_unsloth, "trl": run_trl, "seed": run_seed}
