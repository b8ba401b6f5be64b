"""Known-harmless library messages that the command line hides, so what it prints is medtune's own.

Installed once by `medtune.cli.main`; library users (and the tests) see every warning as usual.
Each entry names its source and why it is harmless here. Causes that are medtune's own are fixed
where they arise, not hidden here.
"""

from __future__ import annotations

import logging
import re
import warnings

# (logger name, message pattern): records that logger emits with that message are dropped.
HARMLESS_LOG_RECORDS = (
    # bitsandbytes tries to fetch an optional CPU kernel from the Hub; offline it falls back to its own.
    ("bitsandbytes.backends.cpu.ops", r"Failed to load CPU gemm_4bit_forward"),
    # The `kernels` package's trust check cannot run offline; nothing is downloaded then.
    ("kernels._internals.hf_hub", r"Skipping publisher trust check"),
    # transformers advises fp32 when loading a packed GGUF in another dtype: medtune picks the
    # dtype on purpose (bf16 where the CPU has it) and has no such option to pass.
    ("transformers.quantizers.quantizer_gguf", r"Pass `dtype=torch.float32`"),
)

# (category, message pattern) of Python warnings dropped.
HARMLESS_WARNINGS = (
    # PEFT, saving an adapter, asks whether the vocabulary was resized by reading the base's
    # config.json from `base_model_name_or_path`; a GGUF base (the embedded model) has none and the
    # hub is offline, so it assumes "not resized", which is right: medtune never resizes it.
    (UserWarning, r"Could not find a config file in .* will assume that the vocabulary was not modified"),
    # TRL (trl/models/utils.py) reads transformers' deprecated `is_gradient_checkpointing`; medtune never does.
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
)


class _DropMatching(logging.Filter):
    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def quiet_known_noise() -> None:
    """Hide the messages listed above (idempotent: a second call adds nothing)."""
    for name, pattern in HARMLESS_LOG_RECORDS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMatching) and f.pattern.pattern == pattern for f in logger.filters):
            logger.addFilter(_DropMatching(pattern))
    for category, pattern in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)  # replaces an identical filter
