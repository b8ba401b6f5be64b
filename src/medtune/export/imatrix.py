"""The importance matrix the quants are made with (`export.imatrix: auto | off | PATH`).

llama.cpp's `llama-imatrix` runs the 16-bit GGUF over calibration text and records, for every
weight matrix, the mean squared activation of each input column; `llama-quantize --imatrix` then
rounds the columns that carry large activations more carefully. Calibration text decides what
"large" means, so medtune uses the run's own train split (the medical text the model was tuned
on), rendered as plain text like the quality corpus. The val split is never used here: it is the
held-out corpus that measures the result (`medtune.export.quality`).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medtune import llamacpp
from medtune.config import RunConfig
from medtune.errors import ArtifactError
from medtune.export.quality import count_tokens, split_text
from medtune.rundir import RunDir

CALIBRATION_TEXT = ".calibration.txt"  # named in every quant's metadata (quantize.imatrix.dataset): keep it


@dataclass
class ImatrixInfo:
    """Which importance matrix the quants were made with."""

    file: str  # its name in gguf/
    source: str  # "the train split (N records)" or "file PATH"
    chunks: int | None
    ctx: int | None
    tokens: int | None  # calibration tokens (llama.cpp's count, BOS included)
    seconds: float

    def figures(self) -> dict[str, Any]:
        return asdict(self)


def prepare_imatrix(config: RunConfig, run: RunDir, f16_path: Path, folder: Path, tokenizer, threads: int
                    ) -> tuple[ImatrixInfo | None, str | None]:
    """The importance matrix for export.imatrix, written into `folder` (the gguf/ folder being
    written) under the name of `run.imatrix`: (info, note).

    auto: computed with llama-imatrix on the run's train split (at most export.imatrix_chunks
    chunks); without a train split, or when every quant type ignores one (Q8_0), there is none, and
    the note says so. off: (None, None). A path:
    copied in. Raises ArtifactError when the train split is too short for one llama.cpp chunk
    pair, ToolError when llama-imatrix fails.
    """
    export = config.export
    if export.imatrix == "off":
        return None, None
    if export.imatrix == "auto" and all(t in llamacpp.IGNORES_IMATRIX for t in export.quant_types):  # normalized names
        # llama-quantize makes these the same with or without one: computing it is minutes for nothing.
        return None, (f"no importance matrix: {', '.join(export.quant_types)} ignore one (export.imatrix: auto "
                      "computes it only for the types it changes)")
    out = folder / run.imatrix.name
    if export.imatrix != "auto":
        source = Path(export.imatrix).expanduser()
        shutil.copyfile(source, out)
        return ImatrixInfo(out.name, f"file {source}", None, None, None, 0.0), None
    train = run.split("train")
    if not train.is_dir():
        return None, (f"no train split in {train.parent}, so no importance matrix (export.imatrix: auto): the quants "
                      "were made without one")
    ctx = export.imatrix_ctx
    corpus = split_text(train, max_tokens=(export.imatrix_chunks + 1) * ctx)
    tokens = count_tokens(tokenizer, corpus.text)
    if tokens < 2 * ctx:
        raise ArtifactError(
            f"the train split ({train}) is {tokens} tokens of text, and llama-imatrix needs at least 2 x "
            f"export.imatrix_ctx = {2 * ctx}: lower export.imatrix_ctx, or set export.imatrix: off"
        )
    text_file = folder / CALIBRATION_TEXT
    text_file.write_text(corpus.text, encoding="utf-8")
    try:
        found = llamacpp.compute_imatrix(f16_path, text_file, out, ctx=ctx, chunks=export.imatrix_chunks, n_threads=threads)
    finally:
        text_file.unlink(missing_ok=True)
    info = ImatrixInfo(out.name, f"the train split ({corpus.records} records)", found["chunks"], ctx,
                       min(tokens, (found["chunks"] or 0) * ctx) or tokens, found["seconds"])
    return info, None
