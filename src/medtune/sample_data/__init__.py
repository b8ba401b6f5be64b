"""Data files shipped with medtune, addressed as `builtin:NAME` in configs."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from medtune.errors import DataError

BUILTIN = {
    "builtin:reasonmed-sample": "reasonmed_sample.jsonl",
    "builtin:broken-records": "broken_records.jsonl",
    # 16 original questions never used for training: the demo's held-out benchmark (medtune_sample).
    "builtin:reasonmed-heldout": "reasonmed_heldout.jsonl",
}


def builtin_path(name: str) -> Path:
    """Path of a data file shipped in medtune.sample_data (e.g. 'builtin:reasonmed-sample')."""
    if name not in BUILTIN:
        raise DataError(f"data.files: unknown built-in data set {name!r}; built-in: {', '.join(BUILTIN)}")
    path = Path(str(importlib.resources.files("medtune.sample_data") / BUILTIN[name]))
    if not path.is_file():
        raise DataError(f"data.files: {name} is missing from the installed package ({path}); reinstall medtune")
    return path
