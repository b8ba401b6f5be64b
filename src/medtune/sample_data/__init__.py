"""Data files shipped with medtune, addressed as `builtin:NAME` in configs."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from medtune.errors import DataError

BUILTIN = {
    "builtin:reasonmed-sample": "reasonmed_sample.jsonl",
    "builtin:broken-records": "broken_records.jsonl",
    # The demo's data (configs/demo.yaml): 32 facts in 8 question families, each family with one
    # option list. Training: two case descriptions per fact with a one-line reasoning; validation
    # (design choices): a third; held-out test (benchmark medtune_sample): a fourth and a fifth.
    "builtin:reasonmed-facts": "reasonmed_facts.jsonl",
    "builtin:reasonmed-facts-val": "reasonmed_facts_val.jsonl",
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
