#!/usr/bin/env python3
"""LoRA training side by side: medtune vs Unsloth vs plain TRL vs the seed recipe, one GPU, one run.

The workload is the same for every system: one Llama-shaped base with random weights, created
once with a fixed seed and saved (`make-base`), loaded by every arm; LoRA on q/k/v/o (r=8,
alpha=16, dropout 0.05, the seed's adapter) or all linear layers (r=16, alpha=32); bf16; the
lognormal length mix of ../shared/bench (median 450, clipped 64..2048, 2,048 examples, the same
token ids for every system); the same token budget (optimizer steps of 4 micro-batches x 16,384
tokens, lr 2e-4 cosine, fused AdamW, seed 0). Each system packs the data its own way.

  medtune  medtune's trainer code path (plan_training / prepare_lora_model / build_trainer) at its
           shipped GPU defaults: packed padding-free micro-batches, torch varlen flash attention,
           regional torch.compile, Liger kernels when installed, fused AdamW.
  unsloth  Unsloth FastLanguageModel + get_peft_model + TRL SFTTrainer (patched by Unsloth), its
           packing (padding-free BFD rows of 16,384 tokens), no gradient checkpointing (fastest
           when memory allows; the H200 has room), its own kernels.
  trl      plain TRL SFTTrainer + PEFT, padding-free BFD packing, sdpa attention (flash-attn is not
           on the device image), fused AdamW.
  seed     the seed script: HF Trainer, fp16 weights + fp16=True, Adafactor, pad/truncate 512,
           4 x 4; it trains as many steps as it takes to see the same real-token budget.

Every row: real (non-pad, untruncated) tokens/s over the timed steps, MFU = 4 * N FLOPs per real
token / 790 TFLOP/s, peak GPU memory (max allocated, weights included), the loss on 24 held-out
examples after training (the same function for every system: so no system wins by computing
less), real tokens trained.

  python benchmarks/train_vs_peers.py make-base --shape 1b --dir /tmp/peers/base-1b
  python benchmarks/train_vs_peers.py run --system medtune --base /tmp/peers/base-1b --out rows.jsonl
  python benchmarks/train_vs_peers.py run --system medtune --shape 8b --quantize nf4 --set gradient_checkpointing=true ...
  python benchmarks/train_vs_peers.py table rows.jsonl --results benchmarks/results/train_vs_peers.json
  ... --tiny: a tiny model on CPU (plumbing check; the unsloth arm needs a GPU)
See benchmarks/train_vs_peers.sh for the time-boxed device driver.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from train_bench import PEAK_FLOPS, count_params, make_timer, seed_rows  # noqa: E402

SEED = 0
N_EXAMPLES = 2048  # as ../shared/bench; 1.08M tokens, more than every arm's budget
N_HELDOUT = 24
MEDIAN, SIGMA, MIN_LEN, MAX_LEN = 450, 0.6, 64, 2048
SEED_MAX_LEN = 512
TOKENS_PER_MICRO_BATCH = 16384
ACCUMULATION = 4
LEARNING_RATE = 2e-4
BOS, EOT, PAD = 128000, 128009, 128004
LORA_SHAPES = {
    "qkvo-r8": dict(r=8, alpha=16, dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
    "all-r16": dict(r=16, alpha=32, dropout=0.05,
                    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
}
SHAPES = {  # Llama 3.x shapes; N is counted from the built model
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=True, rope_factor=32.0),
    "3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
               num_key_value_heads=8, tie_word_embeddings=True, rope_factor=32.0),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=False, rope_factor=8.0),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=True, rope_factor=32.0),
}


def lora_shape(args) -> dict:
    """The adapter of --lora, with --lora-dropout over its dropout when given."""
    shape = dict(LORA_SHAPES[args.lora])
    if args.lora_dropout is not None:
        shape["dropout"] = args.lora_dropout
    return shape


def log(message: str) -> None:
    print(message, flush=True)


def llama_config(shape: str):
    from transformers import LlamaConfig

    spec = dict(SHAPES[shape])
    factor = spec.pop("rope_factor")
    tiny = shape == "tiny"
    return LlamaConfig(
        vocab_size=1024 if tiny else 128256,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": factor, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        bos_token_id=1 if tiny else BOS,
        eos_token_id=2 if tiny else EOT,
        pad_token_id=0 if tiny else PAD,
        use_cache=False,
        **spec,
    )


def special_ids(tiny: bool) -> tuple[int, int, int]:
    return (1, 2, 0) if tiny else (BOS, EOT, PAD)


# --------------------------------------------------------------------------- the shared workload


def lengths(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.round(np.exp(rng.normal(np.log(MEDIAN), SIGMA, n))), MIN_LEN, MAX_LEN).astype(np.int64)


def token_lists(n: int, vocab: int, seed: int, max_len: int | None = None) -> list[np.ndarray]:
    """The examples' token ids: ids 3..min(vocab, 128000) (never a special or pad id)."""
    rng = np.random.default_rng(seed + 1)
    high = min(vocab, 128000)
    out = []
    for length in lengths(n, seed):
        length = int(min(length, max_len)) if max_len else int(length)
        out.append(rng.integers(3, high, size=length, dtype=np.int64))
    return out


def workload(args, vocab: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(training examples, held-out examples); --tiny shortens both for a CPU check."""
    max_len = 256 if args.tiny else None
    train = token_lists(args.examples, vocab, SEED, max_len)
    heldout = token_lists(N_HELDOUT, vocab, SEED + 100, 256 if args.tiny else 1024)
    return train, heldout


def micro_batch_tokens(args) -> int:
    return args.tokens_per_micro_batch or (2048 if args.tiny else TOKENS_PER_MICRO_BATCH)


@torch.no_grad()
def heldout_loss(model, heldout: list[np.ndarray], device: torch.device) -> float:
    """Token-weighted next-token loss over the held-out examples, each run alone (no packing)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    for tokens in heldout:
        ids = torch.as_tensor(tokens, device=device)[None]
        with autocast:
            logits = model(input_ids=ids).logits[0, :-1].float()
        total += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
        count += ids.shape[1] - 1
    model.train(was_training)
    return total / count


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def device_for(args) -> torch.device:
    return torch.device("cpu" if args.tiny else "cuda")


# --------------------------------------------------------------------------- make-base


def synthetic_tokenizer(vocab: int, tiny: bool):
    """A word-level fast tokenizer over the whole vocabulary ("t<id>"), with Llama 3's special ids.

    The benchmarks feed token ids directly; the peers' loaders still want a tokenizer in the folder.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    bos, eot, pad = special_ids(tiny)
    names = {bos: "<|begin_of_text|>", eot: "<|eot_id|>", pad: "<|finetune_right_pad_id|>", 3: "<unk>"}
    vocabulary = {names.get(i, f"t{i}"): i for i in range(vocab)}
    core = Tokenizer(models.WordLevel(vocab=vocabulary, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=names[bos], eos_token=names[eot],
                                        pad_token=names[pad], unk_token="<unk>")
    tokenizer.add_special_tokens({"additional_special_tokens": [names[bos], names[eot], names[pad]]})
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}{{ m['role'] + ' ' + m['content'] + eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}assistant {% endif %}"
    )
    tokenizer.model_max_length = 131072
    return tokenizer


def make_base(args) -> None:
    """The one random-weight base every arm loads: bf16 safetensors + synthetic tokenizer in --dir."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    started = time.perf_counter()
    config = llama_config(args.shape)
    torch.manual_seed(SEED)
    with torch.device(device_for(args)):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                                               pad_token_id=config.pad_token_id)
    out = Path(args.dir)
    model.save_pretrained(out, safe_serialization=True)
    synthetic_tokenizer(config.vocab_size, args.shape == "tiny").save_pretrained(out)
    size = sum(p.stat().st_size for p in out.iterdir()) / 2**30
    log(f"base {args.shape}: {count_params(model):,} parameters, {size:.2f} GiB in {out} ({time.perf_counter() - started:.1f} s)")


# --------------------------------------------------------------------------- token counting for peers


class CountingCollator:
    """Wraps a collator and counts real (non-pad) tokens of every batch it builds.

    accelerate's data loader builds one batch ahead, so `real` runs one micro-batch ahead of
    training (a shift of the timing window, not a longer one); `trained(n)` counts the first n.
    """

    def __init__(self, inner, pad_id: int, attention_key: str = "attention_mask"):
        self.inner, self.pad_id, self.attention_key, self.real = inner, pad_id, attention_key, 0
        self.batches: list[int] = []

    def __call__(self, features):
        batch = self.inner(features)
        if self.attention_key in batch:
            count = int(batch[self.attention_key].sum())
        else:  # padding-free: one row, no pad ids inside the data
            count = int((batch["input_ids"] != self.pad_id).sum())
        self.real += count
        self.batches.append(count)
        return batch

    def trained(self, micro_batches: int) -> int:
        return sum(self.batches[:micro_batches])

    def __getattr__(self, name):
        return getattr(self.inner, name)


# --------------------------------------------------------------------------- (a) medtune


def json_settings(items: list[str]) -> dict:
    """NAME=JSON options (--trainer-arg, --inductor) as a dict of parsed values."""
    return {key: json.loads(value) for key, value in (item.split("=", 1) for item in items)}


def run_medtune(args, row: dict) -> dict:
    from medtune.config import LoraConfig, ModelConfig, TrainConfig
    from medtune.modeling import load_base_model, quantize_nf4_in_place
    from medtune.train.trainer import build_trainer, plan_training, prepare_lora_model

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
    if args.base:
        base = load_base_model(ModelConfig(base=args.base), dtype=plan.precision.model_dtype,
                               attn_implementation=plan.attention, quantize=plan.quantize_base, device=str(device))
    else:  # an in-memory random base (the 3B/8B memory rows: no 16 GB written to disk)
        from transformers import AutoModelForCausalLM

        torch.manual_seed(SEED)
        with torch.device(device):
            base = AutoModelForCausalLM.from_config(llama_config(args.shape), dtype=plan.precision.model_dtype,
                                                    attn_implementation=plan.attention)
        if plan.quantize_base == "nf4":
            quantize_nf4_in_place(base, plan.precision.model_dtype)
    row["n_params"] = full_param_count(base.config)
    row["weights_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2) if device.type == "cuda" else None
    lora = lora_shape(args)
    torch.manual_seed(SEED)
    model = prepare_lora_model(base, LoraConfig(**lora))
    if args.no_input_cast:
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in model.modules():
            if isinstance(module, BaseTunerLayer):
                module.cast_input_dtype_enabled = False
    if args.fuse_frozen_mlp:  # ablation: the frozen gate/up pair as one GEMM as well
        import functools

        import medtune.train.trainer as trainer_module

        trainer_module.fuse_projections = functools.partial(trainer_module.fuse_projections, frozen_mlp=True)
    train, heldout = workload(args, base.config.vocab_size)
    examples = [{"input_ids": t, "labels": t} for t in train]
    holder: dict = {}
    timer = make_timer(args.warmup, args.steps, lambda: holder["trainer"]._pending_tokens)
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
    reset_peak()
    started = time.perf_counter()
    trainer.train()
    row["wall_train_s"] = round(time.perf_counter() - started, 1)
    seconds, tokens = timer.window()
    row.update(seconds=seconds, timed_real_tokens=tokens, peak_gib=round(peak_gib(), 2),
               real_tokens_trained=int(trainer.state.num_input_tokens_seen or 0) + trainer._pending_tokens,
               pack_fill=round(trainer.train_dataset.fill(train_cfg.max_tokens_per_batch), 4),
               settings=dict(fields, lora=args.lora, dropout=lora["dropout"], trainer_args=args.trainer_arg,
                             **({"inductor": args.inductor} if args.inductor else {}),
                             **({"fuse_frozen_mlp": True} if args.fuse_frozen_mlp else {})))
    if profiler is not None:
        row["_profiler"] = profiler  # summarised after this row is safely written (see run)
    if not args.no_heldout:
        from medtune.train.trainer import uncompile_regions

        uncompile_regions(model)  # 24 different lengths: eager beats a recompile per shape
        row["loss_at_equal_tokens"] = heldout_loss(model, heldout, device)
    return row


def full_param_count(config) -> int:
    """N of the full-precision model of `config` (a 4-bit model's own count is of packed bytes)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return count_params(AutoModelForCausalLM.from_config(config))


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
    timer = make_timer(args.warmup, args.steps, lambda: counter.real)
    trainer.add_callback(timer)
    row["packed_rows"] = len(trainer.train_dataset)
    reset_peak()
    started = time.perf_counter()
    trainer.train()
    row["wall_train_s"] = round(time.perf_counter() - started, 1)
    seconds, tokens = timer.window()
    row.update(seconds=seconds, timed_real_tokens=tokens, peak_gib=round(peak_gib(), 2),
               real_tokens_trained=counter.trained(trainer.state.global_step * args.accumulation))
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
    rows = seed_rows(train, pad)
    lora = lora_shape(args)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=lora["r"], lora_alpha=lora["alpha"],
                                             lora_dropout=lora["dropout"], target_modules=lora["target_modules"]))
    # The same real-token budget as the other arms' optimizer steps.
    per_step = 16 * float(np.minimum([len(t) for t in train], SEED_MAX_LEN).mean())
    budget = (args.warmup + args.steps) * args.accumulation * micro_batch_tokens(args) * args.budget_fill
    total_steps = max(int(math.ceil(budget / per_step)), args.warmup + 2)
    warmup = min(10, total_steps // 4)
    counter = CountingCollator(default_data_collator, pad)
    timer = make_timer(warmup, total_steps - warmup, lambda: counter.real)
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


# --------------------------------------------------------------------------- profile


def StepProfiler(step: int, lora_rank: int):  # noqa: N802 (a factory: transformers is imported late)
    """A TrainerCallback that profiles optimizer step `step` and summarises it with `summarize_profile`."""
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    class _StepProfiler(TrainerCallback):
        summary: dict = {}

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == step - 1:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
                self.prof = profile(activities=activities, record_shapes=True)
                self.prof.__enter__()
                self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step and hasattr(self, "prof"):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.wall = time.perf_counter() - self.t0
                self.prof.__exit__(None, None, None)

        def summarize(self) -> dict:
            self.summary = summarize_profile(self.prof.events(), self.wall, lora_rank)
            log("  profile: " + json.dumps({k: v for k, v in self.summary.items() if k != "top_kernels_ms"}))
            return self.summary

    return _StepProfiler()


_MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::_scaled_mm")
_ATTENTION_WORDS = ("varlen", "flash", "attention", "sdpa", "fmha", "efficient_attention")


def _ancestors(event):
    node = event.cpu_parent
    while node is not None:
        yield node
        node = node.cpu_parent


def _is_lora_matmul(event, rank: int) -> bool:
    for shape in getattr(event, "input_shapes", None) or []:
        if isinstance(shape, (list, tuple)) and len(shape) >= 2 and rank in shape[-2:]:
            return True
    return False


def _category(event, rank: int) -> str:
    names = [event.name.lower()] + [a.name.lower() for a in _ancestors(event)]
    if any("optimizer" in n or "adam" in n or "clip_grad" in n for n in names):
        return "optimizer"
    if any(word in n for n in names for word in _ATTENTION_WORDS):
        return "attention"
    if event.name in _MATMUL_OPS:
        return "lora_matmul" if _is_lora_matmul(event, rank) else "base_matmul"
    return "other_kernels"


_KERNEL_FAMILIES = (  # (family, name starts with, name contains): first match wins
    ("attention", (), ("flash", "fmha", "attention")),  # before gemm: flash kernels' names carry cutlass types
    ("gemm", (), ("nvjet", "gemm", "cutlass", "xmma", "cublas")),
    ("inductor_triton", ("triton_",), ()),  # Inductor's triton_poi_/triton_red_/triton_per_... (Liger's: _triton_)
    ("liger_triton", (), ("rope", "swiglu", "rms_norm", "cross_entropy", "element_mul")),
    ("copy_fill", (), ("memcpy", "memset", "copy_kernel", "fill_kernel")),
    ("aten_elementwise", (), ("elementwise", "vectorized", "reduce_kernel", "unrolled")),
)


def _is_range(name: str) -> bool:
    """A user range on the GPU timeline (torch.compile's "## Call CompiledFxGraph ... ##"): it spans
    kernels that are counted on their own, so counting it too double-counts them."""
    return str(name).startswith("## ")


def kernel_family(name: str) -> str:
    lowered = name.lower()
    for family, prefixes, words in _KERNEL_FAMILIES:
        if lowered.startswith(prefixes) or any(word in lowered for word in words):
            return family
    return "other"


def summarize_profile(events, step_wall_s: float, lora_rank: int) -> dict:
    """Where the profiled window's GPU time goes, as shares of all kernel time (they sum to 1).

    GPU kernel time is attributed to the CPU op that launched it (and that op's ancestors):
    attention, base-model matmuls, LoRA matmuls (a matmul with a dimension equal to the rank),
    optimizer, other kernels (norms, activations, rotary, loss, casts, and kernels the profiler cannot
    link to an aten op, such as torch.compile's generated Triton kernels). `gpu_idle` is the share of
    the window (first kernel start to last kernel end) with no kernel running; `data_loading_host`
    is host time in the data loader over that window. The 2026-12-03 H200 run divided kernel time
    by one step's wall time while the window held more than one step, so its shares summed to 175%;
    hence shares of kernel time and the window measured from the events themselves. Its calls 2-4
    also counted torch.compile's GPU ranges ("## Call CompiledFxGraph") as kernels, which put the
    compiled graphs' time in twice (busy 1.3 s in a 0.78 s window); ranges are left out now.
    `kernel_families`: the same kernel time split by kernel name (cuBLAS GEMMs, flash attention,
    Inductor's and Liger's Triton kernels, copies, ATen elementwise): where "other kernels" goes.
    On CPU (no kernels) each op's self CPU time is used.
    """
    buckets = {"attention": 0.0, "base_matmul": 0.0, "lora_matmul": 0.0, "optimizer": 0.0, "other_kernels": 0.0}
    device_total, kernels, data_us = 0.0, 0, 0.0
    top: dict[str, float] = {}
    cpu_events = [e for e in events if "cpu" in str(getattr(e, "device_type", "")).lower()]
    device_events = [e for e in events if "cuda" in str(getattr(e, "device_type", "")).lower()
                     and not (getattr(e, "is_user_annotation", False) or _is_range(e.name))]
    families: dict[str, float] = {}
    for e in device_events:
        device_total += e.time_range.elapsed_us()
        kernels += 1
        top[e.name[:90]] = top.get(e.name[:90], 0.0) + e.time_range.elapsed_us()
        family = kernel_family(e.name)
        families[family] = families.get(family, 0.0) + e.time_range.elapsed_us()
    attributed = 0.0
    for e in cpu_events:
        name = e.name
        if "DataLoader" in name and "__next__" in name:
            data_us += e.time_range.elapsed_us()
        own = sum(k.duration for k in getattr(e, "kernels", []) or [] if not _is_range(k.name))
        if device_events:
            if own:
                buckets[_category(e, lora_rank)] += own
                attributed += own
        else:  # CPU-only run: each op's own (self) CPU time
            buckets[_category(e, lora_rank)] += e.self_cpu_time_total
    busy = device_total if device_events else sum(buckets.values())
    if device_events and device_total > attributed:  # kernels the profiler could not link to an op
        buckets["other_kernels"] += device_total - attributed
    if device_events:
        window_us = max(e.time_range.end for e in device_events) - min(e.time_range.start for e in device_events)
    else:
        window_us = step_wall_s * 1e6
    total = sum(buckets.values()) or 1.0
    shares = {k: round(v / total, 4) for k, v in buckets.items()}
    return {
        "step_wall_s": round(step_wall_s, 4),
        "window_s": round(window_us / 1e6, 4),
        "gpu_busy_s": round(busy / 1e6, 4),
        "kernels": kernels,
        **{f"share_{k}": v for k, v in shares.items()},
        "share_gpu_idle": round(max(window_us - busy, 0.0) / window_us, 4) if device_events and window_us else None,
        "share_data_loading_host": round(data_us / window_us, 4) if window_us else 0.0,
        "kernel_families": {k: round(v / device_total, 4) for k, v in sorted(families.items(), key=lambda kv: -kv[1])}
        if device_total else {},
        "top_kernels_ms": {k: round(v / 1e3, 2) for k, v in sorted(top.items(), key=lambda kv: -kv[1])[:12]},
    }


# --------------------------------------------------------------------------- results


def finish(row: dict, args) -> dict:
    if "seconds" in row and row["seconds"] > 0:
        tps = row["timed_real_tokens"] / row["seconds"]
        row["real_tokens_per_second"] = round(tps, 1)
        row["mfu"] = round(4 * row["n_params"] * tps / PEAK_FLOPS, 4)
    return row


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("torch", "transformers", "peft", "accelerate", "trl", "datasets", "unsloth", "unsloth_zoo",
                 "bitsandbytes", "liger_kernel", "triton"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def run(args) -> None:
    row: dict = {"system": args.system, "shape": args.shape, "lora": args.lora, "tag": args.tag or args.system,
                 "quantize_base": args.quantize, "date": time.strftime("%Y-%m-%d"),
                 "machine": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                 "command": os.environ.get("PEERS_COMMAND"), "overrides": args.set}
    started = time.perf_counter()
    log(f"== {row['tag']}: {args.system} {args.shape} {args.lora} quantize={args.quantize} set={args.set}")
    try:
        {"medtune": run_medtune, "unsloth": run_unsloth, "trl": run_trl, "seed": run_seed}[args.system](args, row)
        finish(row, args)
        log(f"  {row['tag']}: {row.get('real_tokens_per_second', 0):,.0f} real tok/s, MFU {100 * row.get('mfu', 0):.1f}%, "
            f"peak {row.get('peak_gib', 0):.1f} GiB, held-out loss {row.get('loss_at_equal_tokens')}, "
            f"tokens trained {row.get('real_tokens_trained')}")
    except BaseException as exc:  # noqa: BLE001 (a failed arm is a row, not a lost run)
        row["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        row["traceback"] = traceback.format_exc()[-3000:]
        row["peak_gib"] = round(peak_gib(), 2)
        log(row["traceback"])
    row["wall_s"] = round(time.perf_counter() - started, 1)
    row["versions"] = versions()
    profiler = row.pop("_profiler", None)
    with open(args.out, "a") as handle:
        handle.write(json.dumps(row) + "\n")
    if profiler is not None and hasattr(profiler, "prof"):
        # A second row, after the first is on disk: a slow or failed summary cannot cost the measurement.
        entry = {"tag": f"{row['tag']}-profile", "profile_of": row["tag"], "shape": row["shape"]}
        try:
            entry["profile"] = profiler.summarize()
        except Exception as exc:  # noqa: BLE001
            entry["error"] = f"profile summary failed: {type(exc).__name__}: {exc}"[:1000]
        with open(args.out, "a") as handle:
            handle.write(json.dumps(entry) + "\n")
    if "error" in row:
        sys.exit(1)


RATIO_PAIRS = (("{medtune}", "unsloth"), ("{medtune}", "trl"), ("{medtune}", "seed"),
               ("medtune-all-r16", "unsloth-all-r16"), ("medtune", "medtune-liger-off"),
               ("medtune", "medtune-host-syncs"), ("medtune-32k", "medtune"), ("medtune-dropout0", "unsloth-dropout0"),
               ("medtune-liger-swiglu-off", "medtune"), ("medtune-liger-flce-only", "medtune"),
               ("medtune-flce-only-dropout0", "medtune"), ("medtune-coord-descent", "medtune"),
               ("medtune-dropout0", "medtune"), ("medtune", "medtune-liger-previous"),
               ("medtune-no-input-cast", "medtune"), ("medtune-32k-dropout0", "medtune"),
               ("medtune", "medtune-unfused"), ("medtune-dropout0", "medtune-unfused-dropout0"),
               ("medtune-all-r16", "medtune-all-r16-unfused"), ("medtune-native-gqa", "medtune"),
               ("medtune-frozen-mlp", "medtune"), ("medtune-32k-frozen-mlp", "medtune-32k"),
               ("medtune-pointwise-autotune", "medtune"), ("medtune-combo-kernels", "medtune"))


def calls_rows(paths: list[Path]) -> list[dict]:
    """The rows of one or more device calls (one JSONL file each), each marked with its call number.

    A row skipped for time in one call but measured in another is superseded and left out."""
    rows = []
    for call, path in enumerate(paths, 1):
        rows += [{**json.loads(line), "call": call} for line in path.read_text().splitlines() if line.strip()]
    measured = {r["tag"] for r in rows if "skipped" not in r and "error" not in r}
    return [r for r in rows if not ("skipped" in r and r.get("tag") in measured)]


def call_ratios(rows: list[dict]) -> tuple[dict, str]:
    """Same-call ratios only (a ratio across two calls would fold in the machine's drift between them)."""
    ratios = {}
    medtune = "medtune"
    for call in sorted({r["call"] for r in rows}):
        by_tag = {r["tag"]: r for r in rows if r["call"] == call and "error" not in r and "skipped" not in r}
        # If the defaults row failed (e.g. a Liger + compile problem), its liger-off twin stands in, named.
        defaults = "medtune" if "medtune" in by_tag or "medtune-liger-off" not in by_tag else "medtune-liger-off"
        if "unsloth" in by_tag or call == 1:
            medtune = defaults
        for ours, theirs in RATIO_PAIRS:
            ours = ours.format(medtune=defaults)
            if ours in by_tag and theirs in by_tag and ours != theirs:
                a, b = by_tag[ours], by_tag[theirs]
                loss_gap = None
                if a.get("loss_at_equal_tokens") and b.get("loss_at_equal_tokens"):
                    loss_gap = round(a["loss_at_equal_tokens"] / b["loss_at_equal_tokens"] - 1, 4)
                key = f"{ours}/{theirs}"
                if key in ratios:  # the same pair in an earlier call keeps its figure, named by its call
                    earlier = ratios.pop(key)
                    ratios[f"{key} (call {earlier['call']})"] = earlier
                ratios[key] = {
                    "tokens_per_second_ratio": round(a["real_tokens_per_second"] / b["real_tokens_per_second"], 3),
                    "heldout_loss_relative_gap": loss_gap, "call": call}
    return ratios, medtune


def table(args) -> None:
    rows = calls_rows(args.rows)
    header = f"{'row':34} {'call':>4} {'shape':5} {'real tok/s':>11} {'MFU':>6} {'peak GiB':>9} {'held-out loss':>13} {'tokens':>10}"
    lines = [header, "-" * len(header)]
    profiles = [r for r in rows if "profile_of" in r]
    for entry in profiles:
        profile = entry.get("profile") or {}
        shares = [v for k, v in profile.items()
                  if k.startswith("share_") and k not in ("share_gpu_idle", "share_data_loading_host") and v is not None]
        if sum(shares) > 1.001:  # written by the summarizer before its fix (see summarize_profile)
            entry["note"] = "shares sum to more than 100%: kernel time was divided by one step's wall time; superseded"
        elif profile.get("window_s") and profile.get("gpu_busy_s", 0) > 1.01 * profile["window_s"]:
            entry["note"] = ("busy longer than its window: torch.compile's GPU ranges were counted as kernels "
                             "(matmuls inside compiled graphs counted as other kernels too); superseded")
    rows = [r for r in rows if "profile_of" not in r]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r.get('tag', '?'):34} {r['call']:>4} skipped: {r['skipped'][:70]}")
            continue
        if "error" in r:
            lines.append(f"{r.get('tag', '?'):34} {r['call']:>4} {r.get('shape', ''):5} FAILED: {r['error'][:70]}")
            continue
        loss = r.get("loss_at_equal_tokens")
        lines.append(f"{r['tag']:34} {r['call']:>4} {r['shape']:5} {r['real_tokens_per_second']:11,.0f} {100 * r['mfu']:5.1f}% "
                     f"{r['peak_gib']:9.1f} {loss if loss is None else round(loss, 4)!s:>13} {r.get('real_tokens_trained', 0):10,}")
    ratios, medtune = call_ratios(rows)
    for name, pair in ratios.items():
        gap = pair["heldout_loss_relative_gap"]
        lines.append(f"{name.split(' (call')[0]} (call {pair['call']}): {pair['tokens_per_second_ratio']:.2f}x real tok/s"
                     + ("" if gap is None else f", held-out loss {100 * gap:+.2f}%"))
    # The latest call's row of a tag stands for it in the bars.
    by_tag = {r["tag"]: r for r in rows if "error" not in r and "skipped" not in r}
    bars = []
    pair = ratios.get(f"{medtune}/unsloth")
    if pair:
        gap = pair["heldout_loss_relative_gap"]
        bars.append(f"medtune/Unsloth >= 1.5x: {pair['tokens_per_second_ratio']:.2f}x "
                    f"({'met' if pair['tokens_per_second_ratio'] >= 1.5 else 'missed'}); held-out loss within 2%: "
                    f"{'n/a' if gap is None else ('met' if abs(gap) <= 0.02 else 'missed') + f' ({100 * gap:+.2f}%)'}")
    if medtune in by_tag:
        m = by_tag[medtune]
        bars.append(f"MFU >= 60% (>= 95k real tok/s) at the defaults: {100 * m['mfu']:.1f}%, "
                    f"{m['real_tokens_per_second']:,.0f} tok/s ({'met' if m['mfu'] >= 0.6 else 'missed'}; call {m['call']})")
    if "medtune-8b-qlora-gc" in by_tag:
        q = by_tag["medtune-8b-qlora-gc"]
        bars.append(f"QLoRA 8B <= 24 GiB: {q['peak_gib']:.1f} GiB ({'met' if q['peak_gib'] <= 24 else 'missed'}), "
                    f"{q['real_tokens_per_second']:,.0f} tok/s")
    if "medtune-8b-lora-gc" in by_tag or "medtune-8b-lora" in by_tag:
        r = by_tag.get("medtune-8b-lora-gc") or by_tag["medtune-8b-lora"]
        bars.append(f"8B LoRA on one GPU: trained, peak {r['peak_gib']:.1f} GiB, {r['real_tokens_per_second']:,.0f} tok/s")
    lines += [f"bar: {b}" for b in bars]
    for entry in profiles:
        p = entry.get("profile")
        if not p:
            lines.append(f"profile of {entry['profile_of']}: {entry.get('error')}")
            continue
        if entry.get("note"):
            lines.append(f"profile of {entry['profile_of']} (call {entry['call']}): {entry['note']}")
            continue
        lines.append(f"profile of {entry['profile_of']} (call {entry['call']}): step {p['step_wall_s']:.3f} s, {p['kernels']} kernels in a {p.get('window_s', 0):.3f} s window; share of GPU kernel time (idle: of the window):")
        lines.append("  " + ", ".join(f"{k.removeprefix('share_')} {100 * v:.1f}%" for k, v in p.items()
                                      if k.startswith("share_") and v is not None))
        if p.get("kernel_families"):
            lines.append("  by kernel name: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in p["kernel_families"].items()))
            if "attention" not in p["kernel_families"] and p.get("share_attention"):
                # written before flash kernels were told from GEMMs (their names carry cutlass types)
                lines.append(f"  (gemm here holds the flash-attention kernels too: {100 * p['share_attention']:.1f}% attention)")
    print("\n".join(lines))
    if args.results:
        commands = list(dict.fromkeys(r.get("command") for r in rows if r.get("command")))
        out = {"rows": rows, "profiles": profiles, "ratios": ratios, "bars": bars,
               "command": commands[-1] if commands else os.environ.get("PEERS_COMMAND"), "calls": commands,
               "mfu_definition": "4 * N FLOPs per real token / 790e12 FLOP/s (H200 dense bf16 measured)"}
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        Path(args.results).write_text(json.dumps(out, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    base = sub.add_parser("make-base", help="create the shared random-weight base once")
    base.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    base.add_argument("--dir", required=True)
    base.add_argument("--tiny", action="store_true")
    arm = sub.add_parser("run", help="one system's row, appended to --out")
    arm.add_argument("--system", choices=["medtune", "unsloth", "trl", "seed"], required=True)
    arm.add_argument("--base", help="folder from make-base (omit for an in-memory random base: medtune only)")
    arm.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    arm.add_argument("--lora", choices=sorted(LORA_SHAPES), default="qkvo-r8")
    arm.add_argument("--quantize", choices=["none", "nf4"], default="none")
    arm.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="medtune TrainConfig field")
    arm.add_argument("--trainer-arg", action="append", default=[], metavar="NAME=JSON",
                     help="medtune: a TrainingArguments field over medtune's choice (on/off measurements)")
    arm.add_argument("--inductor", action="append", default=[], metavar="NAME=JSON",
                     help="medtune: a torch._inductor.config setting, e.g. coordinate_descent_tuning=true")
    arm.add_argument("--no-input-cast", action="store_true",
                     help="medtune: LoRA inputs stay bf16 under autocast (PEFT's cast_input_dtype_enabled off)")
    arm.add_argument("--fuse-frozen-mlp", action="store_true",
                     help="medtune: fuse each frozen gate/up pair into one GEMM too (fuse_projections(frozen_mlp=True))")
    arm.add_argument("--tag", help="row name in the table")
    arm.add_argument("--out", type=Path, required=True)
    arm.add_argument("--examples", type=int, default=N_EXAMPLES)
    arm.add_argument("--warmup", type=int, default=4, help="optimizer steps before timing")
    arm.add_argument("--steps", type=int, default=8, help="timed optimizer steps")
    arm.add_argument("--accumulation", type=int, default=ACCUMULATION)
    arm.add_argument("--tokens-per-micro-batch", type=int, default=None)
    arm.add_argument("--budget-fill", type=float, default=0.999, help="seed: share of the nominal token budget to match")
    arm.add_argument("--profile", action="store_true", help="medtune: profile the last warm-up step")
    arm.add_argument("--no-heldout", action="store_true")
    arm.add_argument("--unsloth-checkpointing", choices=["off", "on", "unsloth"], default="off")
    arm.add_argument("--lora-dropout", type=float, default=None,
                     help="over the adapter's 0.05 (0: Unsloth's fast LoRA path; same for every system)")
    arm.add_argument("--trl-attention", default="sdpa")
    arm.add_argument("--tiny", action="store_true")
    tab = sub.add_parser("table", help="print the table and ratios; write the results JSON")
    tab.add_argument("rows", nargs="+", type=Path, help="one JSONL file per device call (ratios stay within a call)")
    tab.add_argument("--results", type=Path)
    args = parser.parse_args()
    if args.command == "make-base":
        if args.tiny:
            args.shape = "tiny"
        make_base(args)
    elif args.command == "run":
        if args.tiny:
            args.shape = "tiny"
            args.examples = min(args.examples, 96)
        run(args)
    else:
        table(args)


if __name__ == "__main__":
    main()
