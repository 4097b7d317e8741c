"""Training curves from the metrics history: a PNG and TensorBoard event files. Pure ring."""

from __future__ import annotations

from pathlib import Path

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
