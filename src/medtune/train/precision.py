"""Choosing the numeric precision of training from the hardware and `train.precision`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medtune.errors import ConfigError


@dataclass(frozen=True)
class Precision:
    """How the base weights are stored and which mixed-precision mode the Trainer runs.

    LoRA weights stay fp32 in every mode (PEFT upcasts adapters on half-precision bases), so the
    optimizer never updates half-precision weights.
    """

    name: str  # "bf16", "fp16", "fp32"
    model_dtype: torch.dtype

    def trainer_flags(self) -> dict[str, bool]:
        return {"bf16": self.name == "bf16", "fp16": self.name == "fp16"}


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_precision(setting: str, device_type: str) -> Precision:
    """auto: bf16 on a GPU that supports it, else fp16 mixed precision; fp32 on CPU.

    Raises ConfigError when the requested mode cannot run on this device.
    """
    if setting == "auto":
        if device_type == "cuda":
            setting = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            setting = "fp32"
    if setting == "fp16" and device_type != "cuda":
        raise ConfigError("train.precision: fp16 mixed precision needs a CUDA GPU; use fp32 (or auto) on CPU")
    if setting == "bf16" and device_type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.precision: this GPU has no bf16 support; use fp16 (or auto)")
    return Precision(setting, _DTYPES[setting])
