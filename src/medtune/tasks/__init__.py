"""Benchmark definitions, one small module per benchmark (nanochat-style), below config, data and eval.

A benchmark says where its items come from (a hub dataset, or local files in the benchmark's
original release format), how one item is turned into a user message, and what the answer labels
are. Scoring lives in `medtune.eval`.

    from medtune.tasks import load_items
    items = load_items("pubmedqa", "../shared/data/pubmedqa")   # list[Item]

Adding a benchmark = one new module here that calls `register(Benchmark(...))`, imported below.
"""

from medtune.tasks import medmcqa, medqa, medtune_sample, mmlu, pubmedqa  # noqa: F401  (registers them)
from medtune.tasks.prompts import LOGLIK_ANSWER_PREFIX, user_message
from medtune.tasks.registry import (
    GROUPS,
    LETTERS,
    OPTION_LETTERS,
    REGISTRY,
    YES_NO_MAYBE,
    Benchmark,
    Item,
    benchmark_names,
    expand,
    get_benchmark,
    load_items,
    register,
    subset,
)

__all__ = [
    "GROUPS", "LETTERS", "LOGLIK_ANSWER_PREFIX", "OPTION_LETTERS", "REGISTRY", "YES_NO_MAYBE", "Benchmark", "Item",
    "benchmark_names", "expand", "get_benchmark", "load_items", "register", "subset", "user_message",
]
