"""Prompts with gold answers for RL: from the data sources that have them.

- A derived source (`pubmedqa-reasoning:PATH`, `pubmedqa-train:PATH`, see medtune.data.sources) or
  any local training file (ReasonMed's instruction/input/output, chat messages, ...): the user turn
  is the prompt and the gold is the final option the reply states, read with eval's own
  `extract_answer`. Options are the "A. ..." lines of the prompt, else yes/no/maybe. Records whose
  reply states no final option are counted and skipped.
- `medqa:PATH`, `medmcqa:PATH`: files in the benchmark's release layout (MedQA's question /
  options / answer_idx, MedMCQA's question / opa..opd / cop), asked with eval's cot prompt.

Every prompt is a single user turn, the same text eval's cot mode sends for such an item.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medtune.data.formats import detect_format, normalise
from medtune.data.loading import iter_json, iter_jsonl, resolve_files
from medtune.data.sources import resolve_source
from medtune.data.validation import RecordProblem
from medtune.errors import DataError
from medtune.eval.answers import extract_answer
from medtune.tasks import YES_NO_MAYBE, Item, get_benchmark, user_message

if TYPE_CHECKING:
    from medtune.config import RunConfig

BENCHMARK_SOURCES = ("medqa", "medmcqa")
_OPTION_LINE = re.compile(r"^\s*\(?([A-J])[.)]\s+(.+?)\s*$")


@dataclass(frozen=True)
class RLPrompt:
    """One prompt: the user turn, the answer labels (label -> text) and the gold label."""

    id: str
    user: str
    options: dict[str, str]
    gold: str
    source: str

    def row(self, weight: float = 1.0) -> dict[str, Any]:
        """The dataset row TRL reads: a conversational prompt plus the columns the rewards read."""
        return {"prompt": [{"role": "user", "content": self.user}], "gold": self.gold,
                "options": json.dumps(self.options), "weight": weight, "id": self.id}


@dataclass
class PromptSet:
    prompts: list[RLPrompt]
    skipped: Counter = field(default_factory=Counter)  # reason -> records skipped

    def extend(self, other: PromptSet) -> None:
        self.prompts.extend(other.prompts)
        self.skipped.update(other.skipped)


def options_of(user: str) -> dict[str, str]:
    """The lettered options a prompt lists ("A. text" lines), else PubMedQA's yes/no/maybe."""
    found = {m.group(1): m.group(2) for m in map(_OPTION_LINE.match, user.splitlines()) if m}
    letters = sorted(found)
    if len(letters) >= 2 and letters == [chr(ord("A") + i) for i in range(len(letters))]:
        return found
    return {label: label for label in YES_NO_MAYBE}


def prompt_from_messages(messages: list[dict[str, str]], record_id: str, source: str) -> RLPrompt | None:
    """The prompt of a one-question chat (user turn, then the reference reply), or None when the
    reply states no final option."""
    users = [m["content"] for m in messages if m["role"] == "user"]
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    if len(users) != 1 or not replies:
        return None
    options = options_of(users[0])
    gold = extract_answer(replies[-1], options)
    return RLPrompt(record_id, users[0], options, gold, source) if gold else None


def prompts_from_file(path: Path, source: str) -> PromptSet:
    """Prompts from a local training file in any format medtune reads; records without a final option,
    or that are not one question, are counted under their reason and skipped."""
    records = iter_jsonl(path) if path.suffix == ".jsonl" else iter_json(path)
    found = PromptSet([])
    for raw in records:
        record = raw.record if hasattr(raw, "record") else raw
        location = getattr(raw, "location", str(path))
        fmt = detect_format(record) if isinstance(record, dict) else None
        if fmt is None:
            found.skipped["unknown record format"] += 1
            continue
        try:
            messages = normalise(fmt, record)
        except RecordProblem:
            found.skipped["malformed record"] += 1
            continue
        prompt = prompt_from_messages(messages, str(record.get("id") or location), source)
        if prompt is None:
            found.skipped["reply states no final option"] += 1
        else:
            found.prompts.append(prompt)
    return found


def prompts_from_benchmark_file(name: str, path: Path) -> PromptSet:
    """MedQA / MedMCQA items from a file in the benchmark's release layout, with eval's cot prompt."""
    items: list[Item] = get_benchmark(name).load_local(path)
    return PromptSet([RLPrompt(item.id, user_message(item, "cot"), dict(item.options), item.answer, f"{name}:{path}")
                      for item in items])


def load_prompts(entries: list[str]) -> PromptSet:
    """Every prompt of `entries` (rl.prompts, or data.files): derived sources, medqa:/medmcqa: files,
    local files. Raises DataError for a missing file or when no entry yields a prompt."""
    found = PromptSet([])
    for entry in entries:
        kind, sep, argument = entry.partition(":")
        if sep and kind in BENCHMARK_SOURCES:
            found.extend(prompts_from_benchmark_file(kind, Path(argument).expanduser()))
            continue
        derived = resolve_source(entry)
        for path in [derived] if derived else resolve_files([entry]):
            found.extend(prompts_from_file(Path(path), entry))
    if not found.prompts:
        skipped = ", ".join(f"{n} {why}" for why, n in found.skipped.items()) or "no records"
        raise DataError(f"rl.prompts: no prompt with a gold answer in {', '.join(entries)} ({skipped})")
    return found


def split_prompts(prompts: list[RLPrompt], val_size: float, seed: int) -> tuple[list[RLPrompt], list[RLPrompt]]:
    """(train, val): a seeded held-out share (< 1) or count (>= 1) of the prompts for the reward
    measured before and after RL; never trained on."""
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    n_val = int(round(val_size * len(prompts))) if val_size < 1 else int(val_size)
    n_val = min(n_val, max(len(prompts) - 1, 0))
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return [prompts[i] for i in train], [prompts[i] for i in val]


def run_prompts(config: RunConfig) -> tuple[list[RLPrompt], list[RLPrompt], dict[str, int]]:
    """(train, held-out val, skipped-by-reason): the RL prompts of a run with an rl section, with its seed and limit."""
    rl = config.rl
    found = load_prompts(rl.prompts or list(config.data.files))
    train, val = split_prompts(found.prompts, rl.val_size, config.seed)
    if rl.limit is not None and len(train) > rl.limit:
        train = [train[i] for i in sorted(random.Random(config.seed).sample(range(len(train)), rl.limit))]
    return train, val, dict(found.skipped)


def prompt_key(user: str) -> str:
    """A user turn as compared between RL's prompts and SFT's records (whitespace runs collapsed)."""
    return " ".join(user.split())


def held_out_of_sft(config: RunConfig) -> set[str] | None:
    """The keys (prompt_key) of every RL prompt, training and held-out, when rl.hold_out_of_sft keeps them out of
    SFT's data; None otherwise."""
    if config.rl is None or not config.rl.hold_out_of_sft:
        return None
    train, val, _ = run_prompts(config)
    return {prompt_key(p.user) for p in (*train, *val)}


def class_weights(prompts: list[RLPrompt]) -> dict[str, float]:
    """Gold label -> weight 1 / (its share x number of labels): each label's prompts carry the same total
    correctness reward, so a rare label (PubMedQA's maybe, 11% of the pool) is not given up for the others."""
    counts = Counter(p.gold for p in prompts)
    total = sum(counts.values())
    return {label: total / (len(counts) * count) for label, count in counts.items()}
