"""The figures medtune draws (matplotlib PNGs, written atomically): one module, so the train stage,
the eval report and the HTML report draw the same thing the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medtune.artifacts import atomic_file


def plot_loss_curve(records: list[dict[str, Any]], destination: Path, title: str = "training loss") -> None:
    """Train loss per logging step and validation loss per evaluation, as a PNG (atomically).

    records: the training log's records (`step` with `loss` or `eval_loss`)."""
    import matplotlib  # heavy: only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue", linewidth=1.4)
    if val:
        ax.plot(*zip(*val), label="val loss", color="tab:orange", marker="o", linewidth=1.4)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (assistant tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_file(Path(destination)) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
