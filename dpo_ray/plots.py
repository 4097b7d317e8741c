"""Training curves from the metrics history: a PNG and TensorBoard event files. Pure ring."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

PANELS = ("loss", "rewards/accuracies", "rewards/margins")


def plot_curves(history: list[dict[str, float]], path: Path) -> Path:
    """loss, accuracies and margins against step, train and eval in each panel."""
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 3.6))
    for ax, name in zip(axes, PANELS):
        for split, style in (("train", "-"), ("eval", "o-")):
            points = [(row["step"], row[f"{split}/{name}"]) for row in history if f"{split}/{name}" in row]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, style, label=split, markersize=4)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_tensorboard(history: list[dict[str, float]], log_dir: Path) -> Path:
    """Every numeric metric of every logged step as a TensorBoard scalar (tensorboardX)."""
    from tensorboardX import SummaryWriter

    with SummaryWriter(str(log_dir)) as writer:
        for row in history:
            step = int(row["step"])
            for name, value in row.items():
                if name != "step" and isinstance(value, (int, float)):
                    writer.add_scalar(name, value, step)
    return log_dir


def plot_sweep(rows: list[dict[str, Any]], keys: list[str], metric: str, path: Path) -> Path:
    """The objective over one or two searched keys (beta x learning rate, typically): each trial a
    point coloured and labelled by its value; log axes where the values span a decade or more."""
    points = [r for r in rows if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    xs = [r[keys[0]] for r in points]
    ys = [r[keys[1]] for r in points] if len(keys) > 1 else [r[metric] for r in points]
    values = [r[metric] for r in points]
    shown = ax.scatter(xs, ys, c=values, cmap="viridis", s=140, edgecolors="black")
    for x, y, v in zip(xs, ys, values):
        ax.annotate(f"{v:.3g}", (x, y), textcoords="offset points", xytext=(0, 9), ha="center", fontsize=8)
    for axis, data, set_scale in ((keys[0], xs, ax.set_xscale), (keys[1] if len(keys) > 1 else None, ys, ax.set_yscale)):
        if axis and data and min(data) > 0 and max(data) / min(data) >= 10:
            set_scale("log")
    ax.set_xlabel(keys[0])
    ax.set_ylabel(keys[1] if len(keys) > 1 else metric)
    fig.colorbar(shown, ax=ax, label=metric)
    ax.set_title(f"{metric} per trial")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_rounds(rows: list[dict[str, Any]], path: Path) -> Path:
    """Iterative DPO by round: the held-out mean judge score and the win rate against the initial model."""
    rounds = [r["round"] for r in rows]
    fig, (score_ax, win_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    score_ax.plot(rounds, [r["heldout_mean_score"] for r in rows], "o-")
    score_ax.set_title("held-out mean judge score")
    win_ax.plot(rounds, [r["win_rate_vs_initial"] for r in rows], "o-")
    win_ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    win_ax.set_title("win rate vs the initial model")
    win_ax.set_ylim(0, 1)
    for ax in (score_ax, win_ax):
        ax.set_xlabel("round")
        ax.set_xticks(rounds)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
