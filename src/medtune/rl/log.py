"""The RL log: one JSON object per GRPO log event (rewards, their spread, KL, accuracy, memory)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from medtune.train.callbacks import peak_memory_gib, read_log

# GRPOTrainer's log keys kept in the log (the per-reward means are added as rewards/<name>/mean).
KEPT = ("loss", "reward", "reward_std", "frac_reward_zero_std", "kl", "entropy", "learning_rate", "grad_norm",
        "completions/mean_length", "completions/clipped_ratio")


class RLLogger(TrainerCallback):
    """Appends step, the GRPO metrics, peak GPU memory and elapsed seconds to `path` at each log.

    On resume, records after the checkpoint's step are dropped first (they will be redone)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.started = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_log(self.path) if r.get("step", 0) <= state.global_step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "reward" not in logs:
            return
        record: dict[str, Any] = {"step": state.global_step}
        record.update({k: logs[k] for k in logs if k in KEPT or (k.startswith("rewards/") and k.endswith("/mean"))})
        record.update(peak_mem_gib=round(peak_memory_gib(), 3), elapsed_s=round(time.perf_counter() - self.started, 2))
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
