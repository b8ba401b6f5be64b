"""Dropping training records whose question matches an evaluation benchmark item.

ReasonMed's questions were drawn from the training pools of MedQA, MedMCQA, PubMedQA and MMLU, so
a test question can reappear in the training data verbatim or lightly edited. A training record
is contaminated when, after normalisation (lower case, NFKC, words only), its user text contains
  - at least `threshold` of an evaluation question's word n-grams (`ngram` words each), or
  - for questions shorter than `ngram` words (but at least MIN_QUESTION_WORDS), the whole
    question as a contiguous run of words: the exact-match case.
An exact copy of a question satisfies both. Matching is batched and vectorised: every n-gram of a
batch of training texts is hashed with numpy and looked up among the evaluation n-grams at once,
so 370K ReasonMed records take seconds, not minutes.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numpy as np

from medtune.config import RunConfig
from medtune.errors import ConfigError
from medtune.tasks import expand, load_items

# Shorter questions ("What is anemia?") are too generic to call a match on their own.
MIN_QUESTION_WORDS = 5
_WORD = re.compile(r"\w+")
_BITMAP_SIZE = 1 << 24
_UNKNOWN = 0  # id of a word that occurs in no evaluation question (and of text separators)


def normalise_words(text: str) -> list[str]:
    """Lower-cased NFKC word tokens; punctuation and spacing differences vanish."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).lower())


@dataclass(frozen=True)
class Hit:
    benchmark: str
    item_id: str
    overlap: float  # share of the item's n-grams found in the training text

    def describe(self) -> str:
        how = "whole question" if self.overlap >= 1.0 else f"{self.overlap:.0%} of its word n-grams"
        return f"matches {self.benchmark} item {self.item_id} ({how})"


class Decontaminator:
    """Evaluation questions indexed by hashed word n-grams; `find` marks contaminated training texts."""

    def __init__(self, questions: list[tuple[str, str, str]], ngram: int, threshold: float, sources: dict[str, str]):
        """questions: (benchmark name, item id, question text). sources: benchmark -> where it was loaded from."""
        self.ngram = ngram
        self.threshold = threshold
        self.sources = sources
        self.vocabulary: dict[str, int] = {}
        self.items: list[tuple[str, str, int]] = []  # benchmark, id, number of grams
        self.counts: dict[str, int] = defaultdict(int)
        rng = np.random.default_rng(20240611)
        # Random odd multipliers, one per position in a window: hash = sum(id_k * R_k) mod 2^64.
        self._multipliers = rng.integers(1, 2**63 - 1, size=ngram, dtype=np.int64).astype(np.uint64) | np.uint64(1)
        grams_by_length: dict[int, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
        digest = hashlib.sha256(f"{ngram}:{threshold}".encode())
        self.loaded: dict[str, int] = defaultdict(int)
        for benchmark, item_id, question in questions:
            self.loaded[benchmark] += 1
            words = normalise_words(question)
            if len(words) < MIN_QUESTION_WORDS:
                continue
            digest.update(f"{benchmark}\0{' '.join(words)}\n".encode())
            ids = np.array([self.vocabulary.setdefault(w, len(self.vocabulary) + 1) for w in words], dtype=np.int64)
            length = min(ngram, len(ids))
            hashes = set(self._hashes(ids, length).tolist())
            index = len(self.items)
            self.items.append((benchmark, item_id, len(hashes)))
            self.counts[benchmark] += 1
            for value in hashes:
                grams_by_length[length][value].append(index)
        self._grams = {length: dict(table) for length, table in grams_by_length.items()}
        self._sorted = {length: np.array(sorted(table), dtype=np.uint64) for length, table in self._grams.items()}
        # A bitmap on the low hash bits rejects almost every training n-gram with one gather.
        self._bitmap = np.zeros(_BITMAP_SIZE, dtype=bool)
        for values in self._sorted.values():
            self._bitmap[(values & np.uint64(_BITMAP_SIZE - 1)).astype(np.int64)] = True
        self._digest = digest.hexdigest()

    @classmethod
    def from_config(cls, config: RunConfig) -> Decontaminator:
        """Load the configured benchmarks (local path from data.decontaminate.paths or eval.benchmarks, else hub).

        Raises ConfigError for unknown benchmark names, DataError when a benchmark cannot be loaded.
        """

        settings = config.data.decontaminate
        eval_paths = {spec.name: spec.path for spec in config.eval.benchmarks if spec.path}
        unknown = set(settings.paths) - set(settings.benchmarks)
        if unknown:
            raise ConfigError(f"data.decontaminate.paths: {sorted(unknown)} not in data.decontaminate.benchmarks")
        questions, sources = [], {}
        for name in settings.benchmarks:
            expand(name)  # unknown names fail here, with the list of known ones
            path = settings.paths.get(name) or eval_paths.get(name)
            sources[name] = path or "hub"
            for item in load_items(name, path):
                questions.append((name, item.id, item.question))
        return cls(questions, settings.ngram, settings.threshold, sources)

    def digest(self) -> dict[str, Any]:
        """What the decisions depend on (for the data stage's fingerprint)."""
        return {"questions_sha256": self._digest, "ngram": self.ngram, "threshold": self.threshold}

    def summary(self) -> dict[str, Any]:
        return {
            "benchmarks": {
                name: {"items": self.loaded.get(name, 0), "indexed": self.counts.get(name, 0), "source": source}
                for name, source in self.sources.items()
            },
            "ngram": self.ngram,
            "threshold": self.threshold,
            "min_question_words": MIN_QUESTION_WORDS,
        }

    def _hashes(self, ids: np.ndarray, length: int) -> np.ndarray:
        """Hash of every window of `length` ids (uint64, wrapping arithmetic)."""
        count = len(ids) - length + 1
        if count <= 0:
            return np.zeros(0, dtype=np.uint64)
        values = ids.astype(np.uint64)
        out = np.zeros(count, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for k in range(length):
                out += values[k : k + count] * self._multipliers[k]
        return out

    def find(self, texts: list[str]) -> list[Hit | None]:
        """For each training text (its user turns), the best matching evaluation item, or None."""
        results: list[Hit | None] = [None] * len(texts)
        if not self.items or not texts:
            return results
        words: list[str] = []
        sizes = np.empty(len(texts), dtype=np.int64)
        for index, text in enumerate(texts):
            tokens = normalise_words(text)
            words.extend(tokens)
            words.append("")  # a separator: windows never span two texts
            sizes[index] = len(tokens) + 1
        # dict.get through map runs at C speed; unknown words and separators get _UNKNOWN.
        ids = np.fromiter(map(self.vocabulary.get, words, repeat(_UNKNOWN)), dtype=np.int64, count=len(words))
        owner = np.repeat(np.arange(len(texts)), sizes)
        unknown_before = np.concatenate([[0], np.cumsum(ids == _UNKNOWN)])
        found: dict[int, dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))  # text -> item -> grams
        for length, table in self._grams.items():
            hashes = self._hashes(ids, length)
            if not len(hashes):
                continue
            starts = np.arange(len(hashes))
            whole = (unknown_before[starts + length] - unknown_before[starts]) == 0  # no unknown word, one text
            candidates = starts[whole]
            candidates = candidates[self._bitmap[(hashes[candidates] & np.uint64(_BITMAP_SIZE - 1)).astype(np.int64)]]
            candidates = candidates[_contains(self._sorted[length], hashes[candidates])]
            for position in candidates.tolist():
                value = int(hashes[position])
                for item in table.get(value, ()):
                    found[int(owner[position])][item].add(value)
        for text_index, items in found.items():
            best = max(items.items(), key=lambda kv: len(kv[1]) / self.items[kv[0]][2])
            item, grams = best
            benchmark, item_id, total = self.items[item]
            overlap = len(grams) / total
            if overlap >= self.threshold:
                results[text_index] = Hit(benchmark, item_id, round(overlap, 3))
        return results


def _contains(sorted_values: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Membership of `values` in a sorted array (searchsorted beats np.isin's hashing here)."""
    if not len(sorted_values):
        return np.zeros(len(values), dtype=bool)
    positions = np.minimum(np.searchsorted(sorted_values, values), len(sorted_values) - 1)
    return sorted_values[positions] == values


def question_text(messages: list[dict[str, str]]) -> str:
    """What is matched: the user turns of a chat (the question, options and context)."""
    return "\n".join(m["content"] for m in messages if m["role"] == "user")
