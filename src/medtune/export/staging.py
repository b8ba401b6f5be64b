"""What the llama.cpp converter is given: a staged view of a Hugging Face folder, and the metadata.

The converter reads a model folder and writes a GGUF whose metadata comes partly from the folder
(config.json, README.md's front matter) and partly from `--metadata`. Staging makes that input the
same every time for the same weights, so the same merged model always gives byte-identical files:
- config.json without `quantization_config` (transformers leaves it on GGUF-loaded models and the
  converter then treats the weights as pre-quantized);
- a README.md model card whose front matter carries license and base model, which the converter
  turns into general.license / general.base_model.* metadata;
- the folder named after the run (the converter derives general.basename from it), not a random
  temporary name.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medtune import embedded
from medtune.config import EMBEDDED_MODEL, RunConfig

STAGED_REPLACED = ("config.json", "README.md")  # written by staging; every other file is linked


def base_model_info(config: RunConfig) -> tuple[str | None, str | None, str | None]:
    """(display name, hub id or None, license or None) of the base model."""
    base = config.model.base
    if base == EMBEDDED_MODEL:
        return embedded.HUB_ID.split("/")[-1], embedded.HUB_ID, config.model.license or embedded.LICENSE
    path = Path(base).expanduser()
    if path.exists() or base.endswith(".gguf"):
        return path.name.removesuffix(".gguf"), None, config.model.license
    return base.split("/")[-1], base, config.model.license


def gguf_metadata(config: RunConfig, *, description: str | None = None) -> dict[str, Any]:
    """The GGUF key/values medtune sets through the converter's --metadata (name, fine-tune,
    description, and the base model when it has no hub id)."""
    name, hub_id, _ = base_model_info(config)
    meta: dict[str, Any] = {
        "general.name": config.name,
        "general.basename": config.name,
        "general.finetune": "medtune",
        "general.description": description or f"{config.name}: {name} fine-tuned with a LoRA adapter by medtune",
    }
    if name and not hub_id:  # hub ids come from the model card with their repo URL
        meta["general.base_models"] = [{"name": name}]
    return meta


def model_card_front_matter(config: RunConfig) -> str:
    """The README.md the converter reads license and base model from."""
    _, hub_id, license_id = base_model_info(config)
    front = ["---"]
    if license_id:
        front.append(f"license: {license_id}")
    if hub_id:
        front.append(f"base_model: {hub_id}")
    front += ["tags: [medtune, medical]", "---", "", f"# {config.name}", ""]
    return "\n".join(front)


@contextlib.contextmanager
def staged_model_folder(source: Path, config: RunConfig) -> Iterator[Path]:
    """A temporary view of the Hugging Face folder `source` for the converter (see the module
    docstring): symlinks to its files, a clean config.json and a model card. `source` is untouched;
    the view is deleted on exit."""
    with tempfile.TemporaryDirectory(prefix="medtune-stage-") as scratch:
        staged = Path(scratch) / config.name
        staged.mkdir()
        for item in source.iterdir():
            if item.name not in STAGED_REPLACED:
                (staged / item.name).symlink_to(item.resolve())
        model_config = json.loads((source / "config.json").read_text(encoding="utf-8"))
        model_config.pop("quantization_config", None)
        (staged / "config.json").write_text(json.dumps(model_config, indent=2), encoding="utf-8")
        (staged / "README.md").write_text(model_card_front_matter(config), encoding="utf-8")
        yield staged
