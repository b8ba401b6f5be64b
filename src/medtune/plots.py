"""The figures medtune draws (matplotlib PNGs, written atomically): one module, so the train stage,
the eval report and the HTML report draw the same thing the same way."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medtune.artifacts import atomic_file

if TYPE_CHECKING:  # rows are only read here; medtune.eval imports this module
    from medtune.eval.rows import EvalRow


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


def plot_accuracy(rows: Sequence[EvalRow], destination: Path) -> None:
    """Accuracy with its 95% CI per artifact, one panel per benchmark and one colour per mode, the
    line each artifact must clear (majority label or chance, whichever is higher) dashed; a PNG, atomically."""
    with atomic_file(Path(destination)) as tmp:
        Path(tmp).write_bytes(accuracy_png(rows))


def accuracy_png(rows: Sequence[EvalRow]) -> bytes:
    """plot_accuracy's figure as PNG bytes (the HTML report embeds it)."""
    import matplotlib  # heavy: only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benchmarks = list(dict.fromkeys(r.benchmark for r in rows))
    modes = list(dict.fromkeys(r.mode for r in rows))
    fig, axes = plt.subplots(1, max(len(benchmarks), 1), figsize=(max(5.0, 4.2 * len(benchmarks)), 3.4), squeeze=False)
    width = 0.8 / max(len(modes), 1)
    for ax, benchmark in zip(axes[0], benchmarks):
        mine = [r for r in rows if r.benchmark == benchmark]
        artifacts = list(dict.fromkeys(r.artifact for r in mine))
        for k, mode in enumerate(modes):
            bars = [(a, r) for a, artifact in enumerate(artifacts) for r in mine if r.artifact == artifact and r.mode == mode]
            if not bars:
                continue
            xs = [a + (k - (len(modes) - 1) / 2) * width for a, _ in bars]
            ys = [100 * r.accuracy for _, r in bars]
            errs = [[100 * (r.accuracy - r.ci95[0]) for _, r in bars], [100 * (r.ci95[1] - r.accuracy) for _, r in bars]]
            ax.bar(xs, ys, width, yerr=errs, capsize=3, label=str(mode))
        bar = next((r.bar for r in mine if r.bar), None)
        if bar:
            ax.axhline(100 * bar, color="grey", linestyle="--", linewidth=1, label="majority/chance line")
        ax.set_title(str(benchmark), fontsize=10)
        ax.set_xticks(range(len(artifacts)), [str(a) for a in artifacts], rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_ylabel("accuracy % (95% CI)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()
