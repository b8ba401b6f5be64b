"""Training telemetry: a JSONL log line per logging step and evaluation, a progress bar (the loss
plot is drawn by medtune.plots).

Every callback acts on the main process only, so `accelerate launch` / `torchrun` runs write one
log and draw one bar.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from medtune.errors import TrainingError
from medtune.ui import progress


def peak_memory_gib() -> float:
    """Peak GPU memory allocated by torch on this device, or the process's peak RSS on CPU."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class JsonlLogger(TrainerCallback):
    """Appends one JSON object per Trainer log event to `path`.

    Train records: step, epoch, loss, learning_rate, grad_norm, tokens (real, all devices),
    tokens_per_s, peak_mem_gib, elapsed_s. Eval records: step, epoch, eval_loss.
    On resume, records after the checkpoint's step are dropped first (they will be redone).
    """

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = Path(path)
        self.started = time.perf_counter()
        self._last_tokens = 0
        self._last_time = self.started
        self.resume_step = resume_step

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.resume_step is None:
            self.path.write_text("")
        else:
            kept = [r for r in read_log(self.path) if r.get("step", 0) <= self.resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
            tokens = [r["tokens"] for r in kept if "tokens" in r]
            self._last_tokens = tokens[-1] if tokens else 0
        self._last_time = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        now = time.perf_counter()
        record: dict[str, Any] = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        if "loss" in logs:
            tokens = int(logs.get("real_tokens", 0))
            record.update(
                loss=logs["loss"],
                learning_rate=logs.get("learning_rate"),
                grad_norm=logs.get("grad_norm"),
                tokens=tokens,
                tokens_per_s=round((tokens - self._last_tokens) / max(now - self._last_time, 1e-9), 1),
                peak_mem_gib=round(peak_memory_gib(), 3),
                elapsed_s=round(now - self.started, 2),
            )
            self._last_tokens, self._last_time = tokens, now
        elif "eval_loss" in logs:
            record["eval_loss"] = logs["eval_loss"]
        else:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


class RichProgress(TrainerCallback):
    """A rich progress bar over optimizer steps, with the last train and val loss in its label."""

    def __init__(self):
        self._progress = None
        self._task = None
        self._train_loss: float | None = None
        self._val_loss: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self._progress = progress()
        self._progress.start()
        self._task = self._progress.add_task("training", total=state.max_steps, completed=state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self._progress is not None:
            self._progress.update(self._task, completed=state.global_step, description=self._label())

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._progress is None or not logs:
            return
        if "loss" in logs:
            self._train_loss = logs["loss"]
        if "eval_loss" in logs:
            self._val_loss = logs["eval_loss"]
        self._progress.update(self._task, description=self._label())

    def on_train_end(self, args, state, control, **kwargs):
        if self._progress is not None:
            self._progress.update(self._task, completed=state.global_step, description=self._label())
            self._progress.stop()
            self._progress = None

    def _label(self) -> str:
        parts = ["training"]
        if self._train_loss is not None:
            parts.append(f"loss {self._train_loss:.3f}")
        if self._val_loss is not None:
            parts.append(f"val {self._val_loss:.3f}")
        return "  ".join(parts)


class NonFiniteGradientGuard(TrainerCallback):
    """Stops training at the first optimizer step whose gradient holds nan or inf, before that step
    is applied, with an error that names the step and the setting to change.

    Without it a diverged step is silent: the optimizer writes nan into the LoRA weights, the
    Trainer's log replaces a nan loss by the running mean (logging_nan_inf_filter), and what fails
    is something later and far away (RL's sampling stops with CUDA's "probability tensor contains
    either inf, nan" device-side assert; SFT would write an adapter of nan). Stopping before the
    update keeps the weights and every checkpoint so far finite. Not for fp16 mixed precision, where
    an inf gradient is the loss scaler's normal signal to skip the step (see `gradient_guards`).
    """

    def __init__(self, stage: str, fix: str):
        self.stage = stage
        self.fix = fix

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [getattr(p.grad, "_local_tensor", p.grad)  # FSDP2's DTensor: this process's shard
                 for p in model.parameters() if p.requires_grad and p.grad is not None]
        if not grads:
            return control
        bad = (~torch.nn.utils.get_total_norm(grads).isfinite()).float()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)  # every process stops together
        if bad.item():
            raise TrainingError(
                f"{self.stage}: optimizer step {state.global_step + 1}: the gradient is not finite (nan or inf), so "
                f"training stopped before applying it: the update diverged. {self.fix} Checkpoints written before "
                "this step are intact."
            )
        return control


def gradient_guards(stage: str, fix: str, *, fp16: bool) -> list[TrainerCallback]:
    """The callbacks that guard a stage's gradients: a NonFiniteGradientGuard, except under fp16 mixed
    precision (its loss scaler skips inf steps itself)."""
    return [] if fp16 else [NonFiniteGradientGuard(stage, fix)]


class StopAtStep(TrainerCallback):
    """Ends training after `step` optimizer steps (after that step's checkpoint is written).

    For simulating an interruption in tests; a real interruption is Ctrl-C or a killed process.
    """

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL training log (an absent file reads as empty)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
