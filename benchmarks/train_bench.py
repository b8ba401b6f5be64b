#!/usr/bin/env python3
"""LoRA training throughput: the seed recipe vs medtune's trainer, Llama-3.2-1B-shaped model.

A model built from config with random weights (vocab 128256, hidden 2048, intermediate 8192, 16
layers, 32 heads / 8 KV heads, tied embeddings, rope theta 500000 with llama3 scaling), LoRA
r=8/alpha=16/dropout 0.05 on q/k/v/o, trained on synthetic examples whose lengths follow a
chain-of-thought-like distribution (lognormal, median 450, clipped to 64..2048).

  (seed)    the seed's public script: HF Trainer, fp16 weights + fp16=True, Adafactor, every
            example padded/truncated to 512, batch 4 x accumulation 4, labels = input ids.
  (medtune) medtune's own trainer code path (medtune.train.trainer.plan_training /
            prepare_lora_model / build_trainer) with its GPU defaults: bf16, packed padding-free
            micro-batches of train.max_tokens_per_batch tokens, torch's varlen flash attention,
            torch.compile, fused AdamW, accumulation as configured.

Reported: real (non-pad, untruncated) tokens per second, peak GPU memory, and MFU = 4 * N FLOPs
per real token (frozen base, N = parameter count) over 790 TFLOP/s (H200 dense bf16).

  python benchmarks/train_bench.py --recipe seed    --out results.jsonl
  python benchmarks/train_bench.py --recipe medtune --out results.jsonl
  torchrun --nproc-per-node 2 benchmarks/train_bench.py --recipe medtune --out results.jsonl
  python benchmarks/train_bench.py --summarize results.jsonl     # appends to benchmarks/results/train_bench.json
  python benchmarks/train_bench.py --tiny ...       # CPU smoke test of the plumbing
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medtune.benchmarking import append_run
from medtune.config import LoraConfig, TrainConfig
from medtune.train.measure import (
    SEED_MAX_LENGTH,
    StepTimer,
    count_params,
    example_lengths,
    mfu,
    seed_recipe_rows,
    synthetic_examples,
)
from medtune.train.packing import PackedCollator
from medtune.train.trainer import build_trainer, plan_training, prepare_lora_model

SEED = 0
N_EXAMPLES = 8192
EOT_ID = 128009  # <|eot_id|>: what Llama 3 recipes (the seed too) pad with
PAD_ID = 128004  # <|finetune_right_pad_id|>: medtune's pad


def model_config(tiny: bool):
    from transformers import LlamaConfig

    shape = (
        dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
        if tiny
        else dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8)
    )
    return LlamaConfig(
        **shape,
        tie_word_embeddings=True,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        bos_token_id=128000 if not tiny else 1,
        eos_token_id=EOT_ID if not tiny else 2,
        use_cache=False,
    )


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def log(message: str) -> None:
    if rank() == 0:
        print(message, flush=True)


# --------------------------------------------------------------------------- timing


def global_sum(value: float) -> float:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = torch.tensor([value], dtype=torch.float64, device="cuda" if torch.cuda.is_available() else "cpu")
        torch.distributed.all_reduce(t)
        return float(t.item())
    return value


def global_max(value: float) -> float:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = torch.tensor([value], dtype=torch.float64, device="cuda" if torch.cuda.is_available() else "cpu")
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return float(t.item())
    return value


# --------------------------------------------------------------------------- (a) the seed recipe


def run_seed(args) -> dict:
    """The seed's script: fp16 weights, Trainer(fp16=True), Adafactor, pad/truncate 512, 4 x 4."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, default_data_collator

    config = model_config(args.tiny)
    examples = synthetic_examples(args.examples, config.vocab_size, SEED)
    pad = EOT_ID if not args.tiny else 0
    rows = seed_recipe_rows(examples, pad)
    counter = {"real": 0}

    def collate(features):
        batch = default_data_collator(features)
        counter["real"] += int(batch["attention_mask"].sum())
        return batch

    torch.manual_seed(SEED)
    device = "cpu" if args.tiny else "cuda"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float16 if not args.tiny else torch.float32)
    n_params = count_params(model)
    model = get_peft_model(
        model, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    )
    timer = StepTimer(args.warmup, args.steps, lambda: counter["real"], log)
    training_args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="seed-bench-"),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=4,
        learning_rate=2e-4,
        fp16=not args.tiny,
        optim="adafactor",
        max_steps=args.warmup + args.steps,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=SEED,
        use_cpu=args.tiny,
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    Trainer(model=model, args=training_args, train_dataset=rows, data_collator=collate, callbacks=[timer]).train()
    # Counted as batches are collated (the loader runs one micro-batch ahead: the window is shifted
    # by one micro-batch, not shortened).
    seconds, tokens = timer.window()
    lengths = np.minimum(example_lengths(args.examples, SEED), SEED_MAX_LENGTH)
    return _result("seed", n_params, seconds, tokens, 1, args, extra={
        "recipe": "HF Trainer, fp16 weights + fp16=True, Adafactor, pad/truncate 512, batch 4 x accumulation 4, labels = input ids",
        "padding_fraction": float(1 - lengths.mean() / SEED_MAX_LENGTH),
        "truncated_fraction": float((example_lengths(args.examples, SEED) > SEED_MAX_LENGTH).mean()),
    })


# --------------------------------------------------------------------------- (b) medtune's trainer


def run_medtune(args) -> dict:
    """medtune's trainer code path with its GPU defaults (packing, varlen attention, compile)."""
    from transformers import AutoModelForCausalLM

    config = model_config(args.tiny)
    fields = {
        "max_steps": args.warmup + args.steps,
        "save_steps": 10**6,
        "logging_steps": 10**6,  # token counts are read from the trainer directly
        **({"packing": "on", "max_tokens_per_batch": 2048, "gradient_accumulation_steps": 2} if args.tiny else {}),
        **dict(item.split("=", 1) for item in args.train_set),
    }
    train_cfg = TrainConfig.model_validate(fields)
    plan = plan_training(train_cfg, device_type="cpu" if args.tiny else "cuda")
    log(f"  plan: {plan.describe()}")
    examples = [{"input_ids": t, "labels": t} for t in synthetic_examples(args.examples, config.vocab_size, SEED)]
    torch.manual_seed(SEED)
    device = "cpu" if args.tiny else f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    with torch.device(device):
        base = AutoModelForCausalLM.from_config(config, dtype=plan.precision.model_dtype, attn_implementation=plan.attention)
    n_params = count_params(base)
    model = prepare_lora_model(base, LoraConfig())
    extra = {}
    if rank() == 0:
        extra["attention_check"] = _attention_check(model, examples, plan)
        log(f"  attention check: {extra['attention_check']}")
    holder: dict = {}
    timer = StepTimer(args.warmup, args.steps, lambda: holder["trainer"].real_tokens_trained(), log)
    callbacks = [timer]
    profiler = None
    if args.profile and rank() == 0 and not args.tiny:
        profiler = make_profiler(args.warmup + args.steps + 1)
        callbacks.append(profiler)
        train_cfg = train_cfg.model_copy(update={"max_steps": args.warmup + args.steps + 1})
    trainer = build_trainer(
        model, examples, None, train=train_cfg, plan=plan, seed=SEED,
        output_dir=Path(tempfile.mkdtemp(prefix="medtune-bench-")), pad_token_id=PAD_ID if not args.tiny else 0,
        callbacks=callbacks,
    )
    holder["trainer"] = trainer
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    trainer.train()
    extra["wall_incl_compile_s"] = round(time.perf_counter() - started, 1)
    seconds, tokens = timer.window()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    tokens = int(global_sum(tokens))
    seconds = global_max(seconds)
    fill = trainer.train_dataset.fill(train_cfg.max_tokens_per_batch)
    extra.update(plan=plan.describe(), overrides=args.train_set, max_tokens_per_batch=train_cfg.max_tokens_per_batch,
                 gradient_accumulation_steps=train_cfg.gradient_accumulation_steps, pack_fill=round(fill, 4))
    if profiler is not None:
        extra["profile"] = profiler.summary
    return _result("medtune", n_params, seconds, tokens, world, args, extra=extra)


def _attention_check(model, examples, plan) -> dict:
    """One packed micro-batch through the training attention path vs each example run alone (SDPA).

    Relative error of the packed logits, and packed loss vs the token-weighted per-example loss.
    """
    sample = examples[:6]
    batch = PackedCollator()([sample])
    batch.pop("num_real_tokens")
    device = next(model.parameters()).device
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    inner = model.base_model.model
    model.eval()
    bounds = batch["cu_seq_lens_q"].tolist()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0].float()
        packed_loss = float(model(**batch).loss)
        inner.set_attn_implementation("sdpa")
        num, den, loss_sum, count = 0.0, 0.0, 0.0, 0
        for ex, start, end in zip(sample, bounds[:-1], bounds[1:]):
            ids = torch.as_tensor(ex["input_ids"], device=device)[None]
            alone = model(input_ids=ids).logits[0].float()
            num += float((packed[start:end] - alone).norm() ** 2)
            den += float(alone.norm() ** 2)
            loss_sum += float(torch.nn.functional.cross_entropy(alone[:-1], ids[0, 1:], reduction="sum"))
            count += end - start - 1
        inner.set_attn_implementation(plan.attention)
    model.train()
    return {"logits_rel_err": (num / den) ** 0.5, "packed_loss": packed_loss, "per_example_loss": loss_sum / count}


def make_profiler(step: int):
    """Profiles optimizer step `step` (CUDA kernel time by kind and kernel count)."""
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    class StepProfiler(TrainerCallback):
        summary: dict = {}

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == step - 1:
                torch.cuda.synchronize()
                self.prof = profile(activities=[ProfilerActivity.CUDA])
                self.prof.__enter__()
                self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step and hasattr(self, "prof"):
                torch.cuda.synchronize()
                wall = time.perf_counter() - self.t0
                self.prof.__exit__(None, None, None)
                kinds = {"gemm": 0.0, "attention": 0.0, "other": 0.0}
                count = 0
                top: dict[str, float] = {}
                for event in self.prof.events():
                    if "cuda" not in str(getattr(event, "device_type", "")).lower():
                        continue
                    name = event.name.lower()
                    us = event.time_range.elapsed_us()
                    if any(s in name for s in ("gemm", "nvjet", "cutlass", "xmma", "matmul", "sm90_")):
                        kinds["gemm"] += us
                    elif any(s in name for s in ("flash", "fmha", "attn", "attention")):
                        kinds["attention"] += us
                    else:
                        kinds["other"] += us
                    count += 1
                    top[event.name[:80]] = top.get(event.name[:80], 0.0) + us
                busy = sum(kinds.values()) / 1e6
                self.summary = {
                    "step_wall_s": round(wall, 4),
                    "gpu_busy_s": round(busy, 4),
                    "gpu_busy_fraction": round(busy / wall, 3),
                    "kernels": count,
                    **{f"{k}_s": round(v / 1e6, 4) for k, v in kinds.items()},
                    "top_kernels_s": {k: round(v / 1e6, 4) for k, v in sorted(top.items(), key=lambda kv: -kv[1])[:12]},
                }
                log(f"  profile: {json.dumps({k: v for k, v in self.summary.items() if k != 'top_kernels_s'})}")

    return StepProfiler()


# --------------------------------------------------------------------------- results


def _result(name: str, n_params: int, seconds: float, tokens: int, world: int, args, extra: dict) -> dict:
    tps = tokens / seconds
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    return {
        "name": name,
        "gpus": world,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "n_params": n_params,
        "timed_steps": args.steps,
        "warmup_steps": args.warmup,
        "seconds": round(seconds, 3),
        "real_tokens": tokens,
        "real_tokens_per_s": round(tps, 1),
        "mfu": round(mfu(n_params, tps, world), 4),
        "peak_gib": round(peak, 2),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                     "peft": __import__("peft").__version__},
        "date": time.strftime("%Y-%m-%d"),
        **extra,
    }


def summarize(path: Path, results_dir: Path | None) -> None:
    """Print a call's rows and append them, with the speed-up over the seed and the 2-GPU scaling,
    as one run to benchmarks/results/train_bench.json (medtune.benchmarking's schema)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    seed = next((r for r in rows if r["name"] == "seed"), None)
    defaults = [r for r in rows if r["name"] == "medtune" and not r.get("overrides")]
    one = next((r for r in defaults if r["gpus"] == 1), None)
    two = next((r for r in defaults if r["gpus"] == 2), None)
    figures = {}
    if seed and one:
        figures["speedup_medtune_vs_seed_1gpu"] = round(one["real_tokens_per_s"] / seed["real_tokens_per_s"], 2)
    if one and two:
        figures["scaling_2gpu_vs_1gpu"] = round(two["real_tokens_per_s"] / one["real_tokens_per_s"], 3)
    print(f"{'run':16} {'real tok/s':>11} {'MFU':>7} {'peak GiB':>9}")
    for r in rows:
        print(f"{r['name'] + ' x' + str(r['gpus']):16} {r['real_tokens_per_s']:11.0f} {100 * r['mfu']:6.1f}% {r['peak_gib']:9.1f}"
              f"  {' '.join(r.get('overrides') or [])}")
    for name, value in figures.items():
        print(f"{name}: {value}x")
    append_run("train_bench", rows, results_dir=results_dir, **figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", choices=["seed", "medtune"])
    parser.add_argument("--out", type=Path, default=Path("train_bench.jsonl"))
    parser.add_argument("--examples", type=int, default=N_EXAMPLES)
    parser.add_argument("--warmup", type=int, default=None, help="optimizer steps before timing")
    parser.add_argument("--steps", type=int, default=None, help="timed optimizer steps")
    parser.add_argument("--train-set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a medtune TrainConfig field (e.g. max_tokens_per_batch=32768)")
    parser.add_argument("--profile", action="store_true", help="profile one extra step (medtune, rank 0)")
    parser.add_argument("--tiny", action="store_true", help="tiny model on CPU: a smoke test of the plumbing")
    parser.add_argument("--summarize", type=Path, help="append a call's rows (JSONL) to results/train_bench.json")
    parser.add_argument("--results-dir", type=Path, default=None, help="default: benchmarks/results")
    args = parser.parse_args()
    if args.summarize:
        summarize(args.summarize, args.results_dir)
        return
    if not args.recipe:
        parser.error("--recipe or --summarize is required")
    defaults = {"seed": (5, 30), "medtune": (4, 12)}[args.recipe]
    args.warmup = defaults[0] if args.warmup is None else args.warmup
    args.steps = defaults[1] if args.steps is None else args.steps
    log(f"== {args.recipe} ({os.environ.get('WORLD_SIZE', '1')} process(es)), warmup {args.warmup}, timed {args.steps}")
    result = run_seed(args) if args.recipe == "seed" else run_medtune(args)
    if rank() == 0:
        with open(args.out, "a") as handle:
            handle.write(json.dumps(result) + "\n")
        log(f"  {result['name']} x{result['gpus']}: {result['real_tokens_per_s']:.0f} real tok/s, MFU {100 * result['mfu']:.1f}%, "
            f"peak {result['peak_gib']:.1f} GiB")


if __name__ == "__main__":
    main()
