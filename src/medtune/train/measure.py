"""What medtune's training benchmarks measure with (benchmarks/peers, train_bench, attention_kernels):
the synthetic length mix, a step timer, parameter counts and MFU, and the seed recipe's padded rows.

Public so that the benchmark scripts use medtune's names instead of each other's or private ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from transformers import TrainerCallback

# bf16 dense matrix products measured on the lent H200 (and H100: 798 TFLOP/s on random data):
# the MFU denominator of every training row.
PEAK_FLOPS = 790e12
# The length mix of ../shared/bench: lognormal, median 450 tokens, clipped to 64..2048.
MEDIAN_LENGTH, LENGTH_SIGMA, MIN_LENGTH, MAX_LENGTH = 450, 0.6, 64, 2048
SEED_MAX_LENGTH = 512  # the seed script pads and truncates every example to this


def example_lengths(n: int, seed: int = 0) -> np.ndarray:
    """n example lengths from the benchmark length mix (seeded)."""
    rng = np.random.default_rng(seed)
    return np.clip(np.round(np.exp(rng.normal(np.log(MEDIAN_LENGTH), LENGTH_SIGMA, n))), MIN_LENGTH, MAX_LENGTH).astype(np.int64)


def synthetic_examples(n: int, vocab: int, seed: int = 0, max_len: int | None = None) -> list[np.ndarray]:
    """n examples of random token ids 3..min(vocab, 128000) (never a special or pad id), lengths
    from `example_lengths(n, seed)` (cut to max_len when given)."""
    rng = np.random.default_rng(seed + 1)
    high = min(vocab, 128000)
    out = []
    for length in example_lengths(n, seed):
        length = int(min(length, max_len)) if max_len else int(length)
        out.append(rng.integers(3, high, size=length, dtype=np.int64))
    return out


def seed_recipe_rows(examples: Sequence[np.ndarray], pad: int) -> list[dict]:
    """The seed recipe's rows: each example cut to SEED_MAX_LENGTH and padded with `pad`, labels = ids."""
    rows = []
    for tokens in examples:
        cut = tokens[:SEED_MAX_LENGTH]
        ids = np.full(SEED_MAX_LENGTH, pad, dtype=np.int64)
        ids[: len(cut)] = cut
        mask = np.zeros(SEED_MAX_LENGTH, dtype=np.int64)
        mask[: len(cut)] = 1
        rows.append({"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
                     "labels": torch.from_numpy(ids.copy())})
    return rows


def count_params(model: torch.nn.Module) -> int:
    """Parameters of `model`, tied ones counted once."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def mfu(n_params: int, tokens_per_second: float, gpus: int = 1) -> float:
    """Model FLOPs utilisation: 4 * N FLOPs per trained token (forward 2N + the backward's
    input gradients 2N; LoRA skips the frozen weight gradients) over PEAK_FLOPS per GPU."""
    return 4 * n_params * tokens_per_second / (PEAK_FLOPS * gpus)


class StepTimer(TrainerCallback):
    """Wall time and real tokens at each optimizer step's end (after a device sync), so that a
    window of steps after the warm-up can be timed: `window()` -> (seconds, real tokens).

    token_source: returns the real tokens trained so far (e.g. `trainer.real_tokens_trained`).
    """

    def __init__(self, warmup: int, timed: int, token_source: Callable[[], int], log: Callable[[str], None] = print):
        self.warmup, self.timed, self.token_source, self.log = warmup, timed, token_source, log
        self.times: dict[int, float] = {}
        self.tokens: dict[int, int] = {}

    def _mark(self, step: int) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times[step] = time.perf_counter()
        self.tokens[step] = self.token_source()

    def on_train_begin(self, args, state, control, **kwargs):
        self._mark(0)

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        self._mark(step)
        if step <= 2 or step == self.warmup + self.timed:
            self.log(f"  step {step}: {self.times[step] - self.times[step - 1]:.3f} s")

    def window(self) -> tuple[float, int]:
        end, start = self.warmup + self.timed, self.warmup
        return self.times[end] - self.times[start], self.tokens[end] - self.tokens[start]
