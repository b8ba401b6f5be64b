"""How much each quant changes the model on held-out medical text, measured by llama.cpp itself.

The corpus is the run's val split (runs/<name>/data/val: examples never trained on, and never the
imatrix's calibration text), rendered as plain text: each conversation's turns, one after the other.
llama.cpp's `llama-perplexity` first runs the 16-bit file over it and saves its log-probabilities
(`--kl-divergence-base`), then runs every quant against them (`--kl-divergence`). Per file: its
perplexity, the mean and 99th-percentile KL divergence from the 16-bit file (nats per token) and
the share of positions whose most likely next token is the same ("same top p"), plus size and
bits per weight. These are the figures llama.cpp's own quantization reports use, on the run's
domain instead of Wikipedia. `check_bars` turns them into pass/fail against `export.max_mean_kl`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medtune import llamacpp
from medtune.config import RunConfig
from medtune.data.prepare import chat_messages, read_split
from medtune.errors import ArtifactError
from medtune.rundir import RunDir
from medtune.sample_data import builtin_path

HELDOUT_SAMPLE = "builtin:reasonmed-heldout"  # the corpus when a run has no val split


@dataclass
class CorpusText:
    """Plain text of (part of) a data split."""

    text: str
    records: int
    source: str


@dataclass
class QualityRow:
    """One file on the held-out corpus."""

    type: str
    imatrix: bool  # made with the importance matrix
    shipped: bool  # in gguf/ (False: made only to be measured, then deleted)
    file: str
    size_bytes: int
    bits_per_weight: float
    perplexity: float
    mean_kl: float | None  # KL(16-bit || this file), nats per token; None for the 16-bit file
    p99_kl: float | None
    top1_agreement: float | None
    seconds: float


@dataclass
class QualityTable:
    """The quality table of one export: where the text came from and one row per file."""

    corpus: str
    records: int
    tokens: int
    ctx: int
    chunks: int
    positions: int
    rows: list[QualityRow] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        return asdict(self)

    def row(self, type_name: str, *, shipped: bool = True) -> QualityRow | None:
        return next((r for r in self.rows if r.type == type_name and r.shipped == shipped), None)


def split_text(split_dir: Path, *, max_tokens: int | None = None) -> CorpusText:
    """The conversations of a prepared split (column `messages`) as plain text, system prompts left out.

    max_tokens: stop once the records' token counts (column `length`) reach this many. Raises
    ArtifactError when the split is missing or unreadable.
    """
    dataset = read_split(split_dir)
    lengths = dataset["length"] if "length" in dataset.column_names else None
    parts, total = [], 0
    for index, raw in enumerate(dataset["messages"]):
        messages = chat_messages(raw)
        text = "\n\n".join(m["content"].strip() for m in messages if m["role"] != "system" and m["content"].strip())
        if text:
            parts.append(text)
        total += int(lengths[index]) if lengths is not None else 0
        if max_tokens is not None and lengths is not None and total >= max_tokens:
            break
    return CorpusText("\n\n".join(parts) + "\n", len(parts), str(split_dir))


def count_tokens(tokenizer, text: str) -> int:
    """Tokens of plain text as llama.cpp's tools see it (its tokenizer is the converted HF one; they add BOS)."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1


class QualityMeter:
    """Measures files against one 16-bit reference on one corpus (see the module docstring).

    `reference()` must run first: it saves the 16-bit file's log-probabilities in `scratch`.
    """

    def __init__(self, reference: Path, corpus_file: Path, scratch: Path, *, ctx: int, chunks: int, threads: int):
        self.reference_path, self.corpus_file, self.scratch = reference, corpus_file, scratch
        self.ctx, self.chunks, self.threads = ctx, chunks, threads
        self.base_logits = scratch / "reference.kld"
        self.chunks_used = 0
        self.positions = 0

    def reference(self, type_name: str) -> QualityRow:
        started = time.perf_counter()
        found = llamacpp.perplexity_kl(self.reference_path, self.corpus_file, ctx=self.ctx, chunks=self.chunks,
                                       base_logits=self.base_logits, write_base=True, n_threads=self.threads)
        self.chunks_used, self.positions = found["chunks"], found["positions"]
        return QualityRow(type_name, False, True, self.reference_path.name, self.reference_path.stat().st_size,
                          round(found["bits_per_weight"], 3), round(found["perplexity"], 4), None, None, None,
                          round(time.perf_counter() - started, 2))

    def measure(self, path: Path, type_name: str, *, imatrix: bool, shipped: bool) -> QualityRow:
        if not self.base_logits.is_file():
            raise ArtifactError("QualityMeter.measure called before reference(): no saved 16-bit log-probabilities")
        started = time.perf_counter()
        found = llamacpp.perplexity_kl(path, self.corpus_file, ctx=self.ctx, chunks=self.chunks,
                                       base_logits=self.base_logits, write_base=False, n_threads=self.threads)
        return QualityRow(type_name, imatrix, shipped, path.name, path.stat().st_size, round(found["bits_per_weight"], 3),
                          round(found["perplexity"], 4), round(found["mean_kl"], 6), round(found["p99_kl"], 6),
                          round(found["top1_agreement"], 5), round(time.perf_counter() - started, 2))


def heldout_corpus(config: RunConfig, run: RunDir, tokenizer) -> tuple[CorpusText, int]:
    """The quality table's text: the run's val split (else medtune's shipped held-out sample), as
    many records as export.quality_chunks chunks need; with its token count. Raises ArtifactError
    when it is shorter than the two chunks llama-perplexity needs."""
    export = config.export
    ctx = export.quality_ctx
    val = run.split("val")
    if val.is_dir():
        corpus = split_text(val, max_tokens=(export.quality_chunks + 1) * ctx)
        corpus.source = f"the val split ({corpus.records} held-out records)"
    else:
        lines = builtin_path(HELDOUT_SAMPLE).read_text(encoding="utf-8").splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
        text = "\n\n".join(f"{r['instruction']}\n\n{r['output']}".strip() for r in records) + "\n"
        corpus = CorpusText(text, len(records), f"medtune's held-out sample ({len(records)} records; the run has no val split)")
    tokens = count_tokens(tokenizer, corpus.text)
    if tokens < 2 * ctx:
        raise ArtifactError(
            f"the held-out text for the quality table ({corpus.source}) is {tokens} tokens, and llama-perplexity needs at "
            f"least 2 x export.quality_ctx = {2 * ctx}: lower export.quality_ctx or raise data.val_size"
        )
    return corpus, tokens


class QualityBarError(ArtifactError):
    """A shipped quant is above its export.max_mean_kl bar. `figures` carries what the manifest
    records for the failed attempt (status, error, the whole quality table, the imatrix)."""

    def __init__(self, message: str, figures: dict[str, Any]):
        super().__init__(message)
        self.figures = figures


def check_bars(table: QualityTable, bars: dict[str, float], reference_type: str) -> list[str]:
    """One message per shipped file whose mean KL is above its bar (empty: all pass)."""
    problems = []
    for row in table.rows:
        bar = bars.get(row.type)
        if not row.shipped or bar is None or row.mean_kl is None or row.mean_kl <= bar:
            continue
        made = "with the importance matrix" if row.imatrix else "without an importance matrix"
        problems.append(
            f"{row.file} ({made}): mean KL divergence from {reference_type} is {row.mean_kl:.4f} nats per token "
            f"(99th percentile {row.p99_kl:.3f}, top-1 agreement {row.top1_agreement:.1%}) on {table.positions} "
            f"positions of {table.corpus}, above the bar export.max_mean_kl.{row.type}={bar:g}"
        )
    return problems
