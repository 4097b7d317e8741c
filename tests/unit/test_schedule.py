"""dpo_ray.train.schedule: the same learning rates as transformers.get_scheduler, step for step, and
the training worker's imports no longer load PEFT (transformers.optimization did)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import get_scheduler

from dpo_ray.train.schedule import lr_schedule

REPO = Path(__file__).resolve().parents[2]
HF_NAMES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


def _rates(make, steps: int) -> list[float]:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=3e-4)
    sched = make(opt)
    rates = []
    for _ in range(steps + 2):  # past the end too: linear stays at 0, cosine climbs back, as in transformers
        rates.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return rates


@pytest.mark.parametrize("name", sorted(HF_NAMES))
@pytest.mark.parametrize("warmup,steps", [(0, 1), (0, 17), (3, 17), (10, 10), (1, 2)])
def test_same_rates_as_transformers(name: str, warmup: int, steps: int) -> None:
    ours = _rates(lambda o: lr_schedule(name, o, num_warmup_steps=warmup, num_training_steps=steps), steps)
    theirs = _rates(lambda o: get_scheduler(HF_NAMES[name], o, num_warmup_steps=warmup, num_training_steps=steps), steps)
    assert ours == theirs


def test_state_dict_round_trip_resumes_the_rate() -> None:
    """A checkpoint's scheduler state restores the step count, so a resumed run continues the schedule."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
    sched = lr_schedule("cosine", opt, num_warmup_steps=2, num_training_steps=10)
    for _ in range(5):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
    sched2 = lr_schedule("cosine", opt2, num_warmup_steps=2, num_training_steps=10)
    sched2.load_state_dict(state)
    opt2.param_groups[0]["lr"] = opt.param_groups[0]["lr"]  # restored with the optimizer's state, as a checkpoint does
    opt.step(), sched.step(), opt2.step(), sched2.step()
    assert sched2.get_last_lr() == sched.get_last_lr() and sched2.last_epoch == 6


def test_unknown_name_is_refused() -> None:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
    with pytest.raises(ValueError, match="train.lr_scheduler='poly'"):
        lr_schedule("poly", opt, num_warmup_steps=0, num_training_steps=3)


def test_training_worker_imports_load_no_peft() -> None:
    """PEFT is imported only when model.lora.r > 0 (dpo_ray.modeling.add_lora)."""
    code = "import sys, dpo_ray.train.loop; print('peft' in sys.modules, 'transformers.trainer_utils' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "DS_ACCELERATOR": "cpu"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-2:] == ["False", "False"], proc.stdout
