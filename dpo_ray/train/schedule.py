"""The learning-rate schedules (linear, cosine, constant after a linear warmup) as torch LambdaLRs.

Pure ring: torch only. The same multipliers as transformers.get_scheduler's linear, cosine (half a
cycle, no floor) and constant_with_warmup, the HF Trainer's and so TRL's, step for step
(tests/unit/test_schedule.py compares them). Ours, not transformers', because importing
transformers.optimization pulls transformers.trainer_utils and with it PEFT into every training
worker, LoRA or not: measured here, 13 MiB resident and 0.1-0.2 s once transformers' modeling code
is loaded (which the model needs anyway; 150 MiB and 2 s in a process without it).
"""

from __future__ import annotations

import math
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

SCHEDULES = ("linear", "cosine", "constant")


def _linear(step: int, *, num_warmup_steps: int, num_training_steps: int) -> float:
    if step < num_warmup_steps:
        return float(step) / float(max(1, num_warmup_steps))
    return max(0.0, float(num_training_steps - step) / float(max(1, num_training_steps - num_warmup_steps)))


def _cosine(step: int, *, num_warmup_steps: int, num_training_steps: int) -> float:
    if step < num_warmup_steps:
        return float(step) / float(max(1, num_warmup_steps))
    progress = float(step - num_warmup_steps) / float(max(1, num_training_steps - num_warmup_steps))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def _constant(step: int, *, num_warmup_steps: int) -> float:
    if step < num_warmup_steps:
        return float(step) / float(max(1.0, num_warmup_steps))
    return 1.0


def lr_schedule(name: str, optimizer: Optimizer, num_warmup_steps: int, num_training_steps: int) -> LambdaLR:
    """The schedule ``name`` (train.lr_scheduler) over ``num_training_steps`` optimizer steps.

    A functools.partial as transformers builds it, so a checkpoint's scheduler state has the same
    keys as one written with transformers.get_scheduler."""
    if name == "linear":
        fn = partial(_linear, num_warmup_steps=num_warmup_steps, num_training_steps=num_training_steps)
    elif name == "cosine":
        fn = partial(_cosine, num_warmup_steps=num_warmup_steps, num_training_steps=num_training_steps)
    elif name == "constant":
        fn = partial(_constant, num_warmup_steps=num_warmup_steps)
    else:
        raise ValueError(f"train.lr_scheduler={name!r}: use one of {', '.join(SCHEDULES)}")
    return LambdaLR(optimizer, fn)
