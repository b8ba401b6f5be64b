"""The rl stage: GRPO with verifiable rewards, continuing the SFT LoRA adapter.

`rl_stage(config, run, resume=False)` reads the SFT adapter (run.adapter) and prompts with gold
answers (`rl.prompts`, else `data.files`; see medtune.rl.prompts), holds out `rl.val_size` of them,
and trains the adapter further with TRL's GRPOTrainer (generation through transformers, no vLLM):
for each prompt `rl.num_generations` sampled replies are scored by medtune's own answer extraction
(medtune.rl.rewards) and the adapter is moved towards the replies that beat their group's mean,
with a KL term (`rl.beta`) towards the SFT adapter. Checkpoints go to run.rl_checkpoints (adapter,
optimizer, scheduler, RNG, data position) and `resume=True` continues from the newest. The mean
reward on the held-out prompts is measured greedily before and after (paired bootstrap CI), and with
`rl.val_samples` > 0 also as the mean correctness of that many sampled replies a prompt (the reward GRPO
optimises, less noisy than one greedy reply).
Output, atomically: run.rl_adapter (adapter + tokenizer + rl_log.jsonl + reward_curve.png +
rl_summary.json).
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any

import torch

from medtune.artifacts import atomic_dir, atomic_write_json
from medtune.config import RLConfig, RunConfig, save_resolved_config
from medtune.errors import ArtifactError
from medtune.eval.answers import extract_answer
from medtune.eval.scoring import stop_token_ids
from medtune.eval.stats import paired_difference
from medtune.modeling import load_base_model
from medtune.rl.curves import plot_rl_curves
from medtune.rl.prompts import RLPrompt, class_weights, run_prompts
from medtune.rl.log import RLLogger
from medtune.rl.rewards import correctness_reward, format_reward, reward_functions
from medtune.rundir import RunDir
from medtune.tokenizer import load_tokenizer
from medtune.train.callbacks import gradient_guards, read_log
from medtune.train.precision import resolve_precision
from medtune.train.trainer import latest_checkpoint, run_bookkeeping_arguments


@dataclass
class ValReward:
    """Greedy replies to the held-out prompts: per-prompt correctness and format rewards, and the
    answer eval reads from each reply (None: none found)."""

    correct: list[float]
    formatted: list[float]
    predicted: list[str | None] = field(default_factory=list)

    @property
    def mean_correct(self) -> float:
        return round(sum(self.correct) / len(self.correct), 4) if self.correct else 0.0

    def by_class(self, golds: list[str]) -> dict[str, dict[str, int]]:
        """Per label: how often it was predicted and how often it was right when gold (a collapse of a
        rare label, PubMedQA's maybe, shows here before it shows in the mean)."""
        predicted = Counter(label or "unparsed" for label in self.predicted)
        right = Counter(gold for gold, ok in zip(golds, self.correct) if ok)
        return {"predicted": dict(predicted), "right": dict(right)}


@dataclass
class RLResult:
    """What the rl stage made and measured."""

    adapter_dir: Path
    steps: int
    seconds: float
    train_prompts: int
    val_prompts: int
    skipped: dict[str, int]
    dropped_no_spread: int
    val_before: float | None
    val_after: float | None
    val_difference: dict[str, Any] | None
    peak_memory_gib: float | None
    resumed_from_step: int | None
    last_log: dict[str, Any] = field(default_factory=dict)
    val_classes: dict[str, Any] = field(default_factory=dict)
    val_sampled: dict[str, Any] | None = None  # rl.val_samples > 0: sampled mean correctness before/after

    def figures(self) -> dict[str, Any]:
        return {
            "rl_steps": self.steps,
            "rl_seconds": round(self.seconds, 2),
            "rl_train_prompts": self.train_prompts,
            "rl_val_prompts": self.val_prompts,
            "rl_skipped": dict(self.skipped),
            "rl_dropped_no_spread": self.dropped_no_spread,
            "rl_val_reward_before": self.val_before,
            "rl_val_reward_after": self.val_after,
            "rl_val_reward_difference": self.val_difference,
            "rl_val_classes": dict(self.val_classes),
            **({"rl_val_sampled": self.val_sampled} if self.val_sampled else {}),
            "rl_peak_memory_gib": self.peak_memory_gib,
            "resumed_from_step": self.resumed_from_step,
            **{f"rl_last_{k.replace('/', '_')}": v for k, v in self.last_log.items() if k != "step"},
        }


# --------------------------------------------------------------------------- the stage


def rl_stage(config: RunConfig, run: RunDir, *, resume: bool = False, callbacks: list | None = None) -> RLResult:
    """Continue run.adapter with GRPO and write run.rl_adapter.

    resume: continue from the newest checkpoint in run.rl_checkpoints (fresh when there is none).
    callbacks: extra transformers TrainerCallbacks (tests stop at a step with one).
    Raises ArtifactError (no SFT adapter), DataError (no prompt with a gold answer), ConfigError.
    """
    started = time.perf_counter()
    rl = _require_rl(config)
    train_prompts, val_prompts, skipped = rl_prompts(config)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer, model = load_sft_policy(config, run, device)
    val_before = measure_val_reward(model, tokenizer, val_prompts, rl.max_completion_length)
    sampled_before = sampled_val_reward(model, tokenizer, val_prompts, rl, config.seed)
    kept = drop_without_spread(model, tokenizer, train_prompts, rl) if rl.drop_solved else train_prompts
    checkpoint = latest_checkpoint(run.rl_checkpoints) if resume else None
    if checkpoint is None and run.rl_checkpoints.exists():
        shutil.rmtree(run.rl_checkpoints)  # a fresh start must not pick up another attempt's progress
    trainer = build_grpo_trainer(model, tokenizer, kept, config, run, device, callbacks)
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    val_after = measure_val_reward(model, tokenizer, val_prompts, rl.max_completion_length)
    sampled_after = sampled_val_reward(model, tokenizer, val_prompts, rl, config.seed)
    result = RLResult(
        adapter_dir=run.rl_adapter,
        steps=trainer.state.global_step,
        seconds=time.perf_counter() - started,
        train_prompts=len(kept),
        val_prompts=len(val_prompts),
        skipped=dict(skipped),
        dropped_no_spread=len(train_prompts) - len(kept),
        val_before=val_before.mean_correct if val_prompts else None,
        val_after=val_after.mean_correct if val_prompts else None,
        val_difference=paired_difference(val_after.correct, val_before.correct, seed=config.seed) if val_prompts else None,
        peak_memory_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
        resumed_from_step=int(checkpoint.name.split("-")[-1]) if checkpoint else None,
        last_log=_last_metrics(read_log(run.rl_scratch_log)),
        val_classes=_val_classes(val_prompts, val_before, val_after),
        val_sampled=_compare_sampled(sampled_before, sampled_after, rl.val_samples, config.seed),
    )
    write_rl_adapter(config, run, model, tokenizer, result)
    return result


def _require_rl(config: RunConfig) -> RLConfig:
    if config.rl is None:
        raise ArtifactError("the rl stage needs an `rl` section in the config (see configs/pubmedqa-rl-smollm2.yaml)")
    return config.rl


def rl_prompts(config: RunConfig) -> tuple[list[RLPrompt], list[RLPrompt], dict[str, int]]:
    """(train, held-out val, skipped-by-reason) prompts of the run, with the config's seed and limit."""
    _require_rl(config)
    return run_prompts(config)


def load_sft_policy(config: RunConfig, run: RunDir, device: str):
    """(tokenizer, PEFT model): the base with the SFT adapter loaded trainable, on `device`."""
    from peft import PeftModel  # heavy optional dependency: only when the stage runs

    if not (run.adapter / "adapter_config.json").is_file():
        raise ArtifactError(f"{run.adapter}: no SFT adapter; run `medtune train CONFIG` first")
    precision = resolve_precision(config.train.precision, device)
    tokenizer = load_tokenizer(config.model)
    tokenizer.padding_side = "left"  # generation appends to the right of every prompt
    base = load_base_model(config.model, dtype=precision.model_dtype, attn_implementation="sdpa")
    base.config.pad_token_id = tokenizer.pad_token_id
    model = PeftModel.from_pretrained(base, str(run.adapter), is_trainable=True)
    return tokenizer, model.to(device)


# --------------------------------------------------------------------------- held-out reward


@torch.no_grad()
def generate_replies(model, tokenizer, prompts: list[RLPrompt], max_new_tokens: int, *, n: int = 1, batch_size: int = 64,
                     **sampling: Any) -> list[list[str]]:
    """`n` replies to each prompt through the chat template (what eval's cot mode sends), `batch_size` prompts a
    generate call; greedy unless `sampling` says otherwise (do_sample, temperature)."""
    model.eval()
    device = next(model.parameters()).device
    groups: list[list[str]] = []
    for start in range(0, len(prompts), batch_size):
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": p.user}], tokenize=False,
                                               add_generation_prompt=True) for p in prompts[start:start + batch_size]]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        out = model.generate(**batch, max_new_tokens=max_new_tokens, num_return_sequences=n,
                             eos_token_id=stop_token_ids(tokenizer), pad_token_id=tokenizer.pad_token_id,
                             **({"do_sample": False} | sampling))
        replies = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        groups += [replies[i:i + n] for i in range(0, len(replies), n)]
    return groups


def sampled_replies(model, tokenizer, prompts: list[RLPrompt], n: int, rl: RLConfig) -> list[list[str]]:
    """`n` replies to each prompt, sampled at rl.temperature within rl.max_completion_length (as GRPO samples)."""
    return generate_replies(model, tokenizer, prompts, rl.max_completion_length, n=n, batch_size=16,
                            do_sample=True, temperature=rl.temperature)


def measure_val_reward(model, tokenizer, prompts: list[RLPrompt], max_new_tokens: int) -> ValReward:
    """Correctness and format rewards of the greedy reply to each held-out prompt."""
    if not prompts:
        return ValReward([], [])
    replies = [group[0] for group in generate_replies(model, tokenizer, prompts, max_new_tokens)]
    return ValReward([correctness_reward(r, p.gold, p.options) for r, p in zip(replies, prompts)],
                     [format_reward(r, p.options) for r, p in zip(replies, prompts)],
                     [extract_answer(r, p.options) for r, p in zip(replies, prompts)])


def sampled_val_reward(model, tokenizer, prompts: list[RLPrompt], rl: RLConfig, seed: int) -> list[float] | None:
    """Per held-out prompt, the share of `rl.val_samples` sampled replies whose answer is right (None when
    rl.val_samples is 0). Seeded, and without moving the training's random state."""
    if not rl.val_samples or not prompts:
        return None
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        groups = sampled_replies(model, tokenizer, prompts, rl.val_samples, rl)
    return [sum(correctness_reward(r, p.gold, p.options) for r in group) / len(group) for group, p in zip(groups, prompts)]


def _compare_sampled(before: list[float] | None, after: list[float] | None, samples: int, seed: int) -> dict[str, Any] | None:
    if before is None or after is None:
        return None
    return {"samples_per_prompt": samples, "before": round(fmean(before), 4), "after": round(fmean(after), 4),
            "difference": paired_difference(after, before, seed=seed)}


def _val_classes(prompts: list[RLPrompt], before: ValReward, after: ValReward) -> dict[str, Any]:
    """The held-out prompts' gold labels and, before and after RL, the labels predicted and got right."""
    if not prompts:
        return {}
    golds = [p.gold for p in prompts]
    return {"gold": dict(Counter(golds)), "before": before.by_class(golds), "after": after.by_class(golds)}


def drop_without_spread(model, tokenizer, prompts: list[RLPrompt], rl: RLConfig) -> list[RLPrompt]:
    """The prompts on which `rl.num_generations` sampled replies are neither all right nor all wrong
    (a group without reward spread has zero advantage: GRPO learns nothing from it)."""
    groups = sampled_replies(model, tokenizer, prompts, rl.num_generations, rl)
    kept = [p for p, group in zip(prompts, groups)
            if 0 < sum(correctness_reward(r, p.gold, p.options) for r in group) < len(group)]
    return kept or prompts  # nothing with spread: train on all rather than on nothing


# --------------------------------------------------------------------------- the trainer


def grpo_arguments(config: RunConfig, run: RunDir, device: str, n_prompts: int) -> dict[str, Any]:
    """GRPOConfig fields from the `rl` section: one optimizer step = rl.prompts_per_step prompts x
    rl.num_generations replies, generated in one batch, trained on in micro-batches of rl.micro_batch
    (the largest divisor of the step's completions not above it)."""
    rl = _require_rl(config)
    precision = resolve_precision(config.train.precision, device)
    completions = rl.prompts_per_step * rl.num_generations
    micro = next(size for size in range(min(rl.micro_batch, completions), 0, -1) if completions % size == 0)
    steps = rl.max_steps or max(1, int(rl.epochs * n_prompts / rl.prompts_per_step + 0.999))
    return dict(
        output_dir=str(run.rl_checkpoints),
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=completions // micro,
        num_generations=rl.num_generations,
        generation_batch_size=completions,
        max_completion_length=rl.max_completion_length,
        temperature=rl.temperature,
        learning_rate=rl.learning_rate,
        lr_scheduler_type="constant",
        beta=rl.beta,
        # "group" (TRL's default) divides each group's rewards by their own spread, which cancels the
        # class-balance weight (one weight per prompt, so per group); "batch" or "none" keep it.
        scale_rewards=rl.scale_rewards,
        max_steps=steps,
        logging_steps=rl.logging_steps,
        **run_bookkeeping_arguments(rl.save_steps, rl.save_total_limit, config.seed),
        use_cpu=device == "cpu",
        # TRL's configs turn activation checkpointing on by default (their own field, whatever transformers
        # calls it); a small policy in micro-batches fits without, and it would redo the forward in every backward.
        gradient_checkpointing=False,
        **precision.trainer_flags(),
        remove_unused_columns=False,
        log_completions=False,
    )


def build_grpo_trainer(model, tokenizer, prompts: list[RLPrompt], config: RunConfig, run: RunDir, device: str,
                       callbacks: list | None = None):
    """TRL's GRPOTrainer on `prompts` with medtune's rewards, logging into run.rl_checkpoints."""
    from datasets import Dataset  # heavy optional dependencies: only when the stage runs
    from trl import GRPOConfig, GRPOTrainer

    rl = _require_rl(config)
    weights = class_weights(prompts) if rl.balance_classes else {}
    rows = [p.row(weights.get(p.gold, 1.0)) for p in prompts]
    functions, reward_weights = reward_functions(format_weight=rl.format_weight, length_weight=rl.length_weight,
                                                 max_completion_length=rl.max_completion_length)
    args = GRPOConfig(**grpo_arguments(config, run, device, len(rows)), reward_weights=reward_weights)
    model.train()
    return GRPOTrainer(
        model=model,
        reward_funcs=functions,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        # A diverged GRPO step (seen at lr 3e-4 with group-scaled rewards: every group's replies alike, then a nan
        # gradient) stops with a clear error instead of CUDA's sampling assert one step later.
        callbacks=[RLLogger(run.rl_scratch_log), *(callbacks or []), *gradient_guards(
            "rl", f"Lower rl.learning_rate ({rl.learning_rate:g} now), or use rl.scale_rewards: batch (at 3e-4 it did not "
            "diverge where group did), and run again.", fp16=args.fp16)],
    )


# --------------------------------------------------------------------------- output


def write_rl_adapter(config: RunConfig, run: RunDir, model, tokenizer, result: RLResult) -> None:
    """run.rl_adapter, atomically: the trained adapter (not GRPO's frozen reference copy), tokenizer,
    resolved config, log, reward curves and summary."""
    records = read_log(run.rl_scratch_log)
    tokenizer.padding_side = "right"  # as the SFT adapter's tokenizer was saved
    with atomic_dir(run.rl_adapter) as out:
        model.save_pretrained(out, safe_serialization=True, selected_adapters=["default"])
        tokenizer.save_pretrained(out)
        save_resolved_config(config, out / run.config_file.name)
        inside = {path: out / path.relative_to(run.rl_adapter) for path in (run.rl_log, run.reward_curve, run.rl_summary)}
        inside[run.rl_log].write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        plot_rl_curves(records, inside[run.reward_curve], title=f"{config.name}: GRPO")
        atomic_write_json(inside[run.rl_summary], {**result.figures(), "adapter_dir": str(result.adapter_dir)})


def _last_metrics(records: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("step", "reward", "reward_std", "frac_reward_zero_std", "kl", "rewards/correct/mean")
    return {k: records[-1][k] for k in keys if records and k in records[-1]}
