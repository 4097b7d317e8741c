"""When a run ends: step budget, early stopping, a loss floor, or a non-finite loss. Pure ring."""

from __future__ import annotations

import math
from dataclasses import dataclass

from dpo_ray.config import TrainConfig


class TrainingError(RuntimeError):
    """Training ran but produced no usable model; the message says why and what to change."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl+C stopped training before a model was written; the message says where and how to resume.
    A KeyboardInterrupt, so code that does not catch it stops as on any Ctrl+C."""


def interrupted_message(step: int, total: int, output_dir: str, has_checkpoint: bool) -> str:
    """The one line an interrupted run ends with (pipelines/dpo.py prints it after 'dpo_ray: ')."""
    head = f"interrupted at step {step} of {total}; no model was written"
    if has_checkpoint:
        return (f"{head}; resume with: python pipelines/dpo.py --config {output_dir}/config.yaml "
                f"train.resume_from={output_dir}")
    return f"{head}; no checkpoint to resume from (train.checkpoint_every=N saves one every N steps)"


def total_steps(train: TrainConfig, train_pairs: int) -> int:
    """Optimizer steps for the run: train.epochs over the train pairs when set, else train.max_steps."""
    if train.epochs is None:
        return train.max_steps
    return max(1, math.ceil(train.epochs * train_pairs / train.batch_size))


@dataclass
class Stopper:
    """Decides, identically on every rank (it sees all-reduced metrics), whether to stop and why."""

    train: TrainConfig
    best: float | None = None
    evals_without_improvement: int = 0
    skipped_steps: int = 0

    def after_step(self, train_loss: float, grad_norm: float) -> str | None:
        if not (math.isfinite(train_loss) and math.isfinite(grad_norm)):
            if self.train.nonfinite == "stop":
                return "non_finite"
            self.skipped_steps += 1  # DeepSpeed (ZeRO >= 1) skipped this update on the overflow
            return None
        if self.train.stop_loss is not None and train_loss < self.train.stop_loss:
            return "stop_loss"
        return None

    def after_eval(self, metrics: dict[str, float]) -> str | None:
        if self.train.early_stopping_patience is None:
            return None
        value = metrics[self.train.early_stopping_metric]
        sign = 1.0 if self.train.early_stopping_mode == "max" else -1.0
        if self.best is None or sign * (value - self.best) > self.train.early_stopping_min_delta:
            self.best, self.evals_without_improvement = value, 0
            return None
        self.evals_without_improvement += 1
        return "early_stopping" if self.evals_without_improvement >= self.train.early_stopping_patience else None
