"""The benchmark registry: what an evaluation item is, how a benchmark is defined, and lookup.

Everything in `medtune.tasks` is plain Python (no torch) and imports nothing above it, so config
(benchmark names), data (derived training sources, decontamination) and eval (scoring) can all
use it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtune.errors import ConfigError, DataError
from medtune.sample_data import builtin_path
from medtune.tasks.packaged import packaged_path

LETTERS = ("A", "B", "C", "D")
OPTION_LETTERS = tuple("ABCDEFGHIJ")
"""Labels of a multiple-choice item's options, in order: an item has as many as its source gives
(MedQA's US files five, its four-option copy and MedMCQA/MMLU four), at least two."""
YES_NO_MAYBE = ("yes", "no", "maybe")


@dataclass(frozen=True)
class Item:
    """One evaluation question.

    `options` maps each answer label to its text (letters for multiple choice, as many as the item
    has: A-D, A-E, ...; for PubMedQA the labels are yes/no/maybe and map to themselves); `answer` is
    the correct label; `context` holds the passage a question is about (PubMedQA's abstract), empty
    otherwise.
    """

    id: str
    question: str
    options: dict[str, str]
    answer: str
    context: str = ""
    benchmark: str = ""


@dataclass(frozen=True)
class Benchmark:
    """How to load and prompt one benchmark."""

    name: str
    title: str
    hub_id: str
    hub_config: str | None
    hub_split: str
    choices: tuple[str, ...]
    load_local: Callable[[Path], list[Item]]
    from_hub_record: Callable[[dict[str, Any], int], Item]
    local_format: str = field(default="", compare=False)  # one line for error messages and --help
    default_path: str | None = None  # used when no path is given (benchmarks shipped with medtune)

    def load_hub(self) -> list[Item]:
        """Load the benchmark from the Hugging Face hub (needs network or a warm datasets cache)."""
        try:
            from datasets import load_dataset

            dataset = load_dataset(self.hub_id, self.hub_config, split=self.hub_split)
        except Exception as exc:  # datasets raises many unrelated types for "cannot fetch"
            raise DataError(
                f"benchmark {self.name}: cannot load {self.hub_id}"
                f"{'/' + self.hub_config if self.hub_config else ''} ({self.hub_split}) from the hub: {exc}; "
                f"without network pass a local copy with path ({self.local_format})"
            ) from exc
        return [self.from_hub_record(dict(record), index) for index, record in enumerate(dataset)]


REGISTRY: dict[str, Benchmark] = {}
# Group names that expand to several registered benchmarks.
GROUPS: dict[str, tuple[str, ...]] = {}


def register(benchmark: Benchmark) -> Benchmark:
    if benchmark.name in REGISTRY or benchmark.name in GROUPS:
        raise ValueError(f"benchmark {benchmark.name!r} registered twice")
    REGISTRY[benchmark.name] = benchmark
    return benchmark


def benchmark_names() -> list[str]:
    """Every registered benchmark and group name."""
    return sorted([*REGISTRY, *GROUPS])


def expand(name: str) -> list[str]:
    """Registered benchmark names behind `name` (a benchmark or a group such as mmlu_medical)."""
    if name in REGISTRY:
        return [name]
    if name in GROUPS:
        return list(GROUPS[name])
    raise ConfigError(f"unknown benchmark {name!r}; known: {', '.join(benchmark_names())}")


def get_benchmark(name: str) -> Benchmark:
    if name not in REGISTRY:
        expand(name)  # raises with the list of names
        raise ConfigError(f"{name!r} is a group of benchmarks ({', '.join(GROUPS[name])}); evaluate its members")
    return REGISTRY[name]


def load_items(name: str, path: str | Path | None = None, limit: int | None = None, seed: int = 0) -> list[Item]:
    """The evaluation items of a benchmark (or group), in a stable order.

    `path`: local data in the benchmark's original release format (a file or a folder), a file shipped
    with medtune (`builtin:NAME`) or with another installed package (`package:NAME`, see
    tasks.packaged); None loads from the hub. `limit`: a fixed subset of N items drawn with `seed` (the same N and seed always
    give the same items, kept in their original order). For a group, `limit` applies per member.
    Raises ConfigError for unknown names, DataError for missing or malformed files.
    """
    if path is not None and not str(path).startswith(("builtin:", "package:")) and not Path(path).exists():
        raise DataError(f"benchmark {name}: {path} does not exist (give a file or folder in the original release format)")
    items: list[Item] = []
    for member in expand(name):
        benchmark = REGISTRY[member]
        source = path if path is not None else benchmark.default_path
        if source is not None and str(source).startswith("builtin:"):
            source = builtin_path(str(source))  # a data file shipped with medtune
        elif source is not None and str(source).startswith("package:"):
            source = packaged_path(str(source))  # a data file another installed package ships
        loaded = benchmark.load_local(Path(source)) if source is not None else benchmark.load_hub()
        if not loaded:
            raise DataError(f"benchmark {member}: no items found in {path or benchmark.hub_id}")
        items.extend(subset(loaded, limit, seed))
    return items


def subset(items: list[Item], limit: int | None, seed: int = 0) -> list[Item]:
    """A seeded random subset of `limit` items in their original order (all items if limit is None)."""
    if limit is None or limit >= len(items):
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]
