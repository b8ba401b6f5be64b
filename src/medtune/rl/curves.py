"""The RL figure: reward (total and correctness, i.e. training accuracy) and KL per step, as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medtune.artifacts import atomic_file


def plot_rl_curves(records: list[dict[str, Any]], destination: Path, title: str = "GRPO") -> None:
    """Mean reward, correctness (the share of sampled replies that are right) and the share of prompt
    groups with no reward spread per step; KL to the SFT adapter on a second axis, when logged."""
    import matplotlib  # heavy: only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key: str) -> list[tuple[int, float]]:
        return [(r["step"], r[key]) for r in records if r.get(key) is not None]

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for key, label, colour in (("reward", "mean reward", "tab:blue"), ("rewards/correct/mean", "correct (weighted)", "tab:green"),
                               ("frac_reward_zero_std", "groups without spread", "tab:grey")):
        points = series(key)
        if points:
            ax.plot(*zip(*points), label=label, color=colour, linewidth=1.4)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("reward / share")
    ax.set_title(title)
    kl = series("kl")
    if kl:
        twin = ax.twinx()
        twin.plot(*zip(*kl), label="KL to SFT", color="tab:red", linestyle="--", linewidth=1.0)
        twin.set_ylabel("KL")
        twin.legend(loc="upper right", fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    with atomic_file(destination) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
