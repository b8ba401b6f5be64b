"""Batches: padding-free packed micro-batches for GPU, plain padded batches for CPU.

Packing: examples are grouped once (best-fit decreasing on length) into micro-batches of at most
`max_tokens` tokens. A micro-batch is one row of the examples laid back to back, with
- position ids restarting at 0 for every example (rotary embeddings see each example alone),
- the example boundaries as `cu_seq_lens_*` / `max_length_*` for varlen attention (no attention
  across examples, no mask tensor, no pad tokens),
- the first label of every example set to -100, so the last token of one example is never
  trained to predict the first token of the next.
The same groups are reused every epoch; the Trainer's sampler shuffles their order per epoch,
which keeps the data position of a checkpoint well defined for resuming.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

IGNORE_INDEX = -100


def pack_by_length(lengths: Sequence[int], max_tokens: int, seed: int = 0) -> list[list[int]]:
    """Group example indices into bins of at most `max_tokens` tokens (best-fit decreasing).

    An example longer than `max_tokens` gets a bin of its own. Bins come back in a seeded random
    order, each bin's examples in index order.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free tokens, bin id), sorted
    for index in order:
        need = int(lengths[index])
        slot = bisect.bisect_left(free, (need, -1))
        if slot < len(free):
            room, bin_id = free.pop(slot)
            bins[bin_id].append(index)
            bisect.insort(free, (room - need, bin_id))
        else:
            bins.append([index])
            bisect.insort(free, (max(max_tokens - need, 0), len(bins) - 1))
    for members in bins:
        members.sort()
    random.Random(seed).shuffle(bins)
    return bins


class ExampleRows:
    """Uniform row access to tokenized examples: a `datasets.Dataset` or a list of dicts.

    Only `input_ids` and `labels` are read, as int64 numpy arrays.
    """

    def __init__(self, data: Any):
        self.data = data
        if hasattr(data, "with_format") and hasattr(data, "column_names"):
            self.data = data.with_format("numpy", columns=["input_ids", "labels"])

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        row = self.data[int(index)]
        return {
            "input_ids": np.asarray(row["input_ids"], dtype=np.int64),
            "labels": np.asarray(row["labels"], dtype=np.int64),
        }

    def lengths(self) -> list[int]:
        if hasattr(self.data, "column_names") and "length" in self.data.column_names:
            return [int(x) for x in self.data.with_format(None)["length"]]
        return [len(self[i]["input_ids"]) for i in range(len(self))]


class PackedDataset(torch.utils.data.Dataset):
    """Each item is one packed micro-batch: the list of its examples."""

    def __init__(self, rows: ExampleRows, max_tokens: int, seed: int = 0):
        self.rows = rows
        self.bins = pack_by_length(rows.lengths(), max_tokens, seed)

    def __len__(self) -> int:
        return len(self.bins)

    def __getitem__(self, index: int) -> list[dict[str, np.ndarray]]:
        return [self.rows[i] for i in self.bins[index]]

    def fill(self, max_tokens: int) -> float:
        lengths = self.rows.lengths()
        return sum(lengths) / (len(self.bins) * max_tokens) if self.bins else 0.0


class ExampleDataset(torch.utils.data.Dataset):
    """Each item is one example (unpacked batches)."""

    def __init__(self, rows: ExampleRows):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return self.rows[index]


class PackedCollator:
    """Flattens the examples of one or more packed items into a single padding-free row.

    Output: input_ids, labels, position_ids ([1, T] int64), cu_seq_lens_q/k (int32), max_length_q/k
    (int), and num_real_tokens (int; the Trainer subclass removes it before the forward).
    """

    def __call__(self, items: list[Any]) -> dict[str, Any]:
        examples = [ex for item in items for ex in (item if isinstance(item, list) else [item])]
        ids, labels, positions, lengths = [], [], [], []
        for ex in examples:
            n = len(ex["input_ids"])
            ids.append(ex["input_ids"])
            lab = np.array(ex["labels"], dtype=np.int64, copy=True)
            lab[0] = IGNORE_INDEX
            labels.append(lab)
            positions.append(np.arange(n, dtype=np.int64))
            lengths.append(n)
        cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        max_len = int(max(lengths))
        return {
            "input_ids": torch.from_numpy(np.concatenate(ids))[None],
            "labels": torch.from_numpy(np.concatenate(labels))[None],
            "position_ids": torch.from_numpy(np.concatenate(positions))[None],
            "cu_seq_lens_q": torch.from_numpy(cu),
            "cu_seq_lens_k": torch.from_numpy(cu.copy()),
            "max_length_q": max_len,
            "max_length_k": max_len,
            "num_real_tokens": int(cu[-1]),
        }


class PaddedCollator:
    """Right-pads examples to the longest in the batch: pad id in input_ids, -100 in labels, mask 0."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, examples: list[dict[str, np.ndarray]]) -> dict[str, Any]:
        width = max(len(ex["input_ids"]) for ex in examples)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = len(examples)
        ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for row, ex in enumerate(examples):
            n = len(ex["input_ids"])
            ids[row, :n] = torch.as_tensor(ex["input_ids"])
            labels[row, :n] = torch.as_tensor(ex["labels"])
            mask[row, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask, "num_real_tokens": int(mask.sum())}
