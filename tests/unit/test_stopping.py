from __future__ import annotations

import math

from dpo_ray.config_load import load_config
from dpo_ray.train.stopping import Stopper, total_steps


def test_total_steps_from_epochs_or_max_steps() -> None:
    assert total_steps(load_config(None, ["train.max_steps=7"]).train, 1000) == 7
    # 1.5 epochs over 1000 pairs at 32 pairs per step: ceil(46.875) = 47
    assert total_steps(load_config(None, ["train.epochs=1.5", "train.batch_size=32"]).train, 1000) == 47


def test_stop_loss_and_non_finite() -> None:
    stopper = Stopper(load_config(None, ["train.stop_loss=0.1"]).train)
    assert stopper.after_step(0.5, 1.0) is None
    assert stopper.after_step(0.05, 1.0) == "stop_loss"
    assert stopper.after_step(math.nan, 1.0) == "non_finite"
    assert Stopper(load_config(None, []).train).after_step(0.5, math.inf) == "non_finite"
    skipper = Stopper(load_config(None, ["train.nonfinite=skip"]).train)
    assert [skipper.after_step(0.5, g) for g in (math.inf, 1.0, math.nan)] == [None, None, None]
    assert skipper.skipped_steps == 2


def test_early_stopping_patience_min_and_max() -> None:
    stopper = Stopper(load_config(None, ["train.early_stopping_patience=2"]).train)
    assert [stopper.after_eval({"eval/loss": v}) for v in (0.6, 0.5, 0.55, 0.49, 0.5, 0.5)] == [
        None, None, None, None, None, "early_stopping"]
    up = Stopper(load_config(None, ["train.early_stopping_patience=1", "train.early_stopping_metric=eval/rewards/accuracies",
                                    "train.early_stopping_mode=max", "train.early_stopping_min_delta=0.01"]).train)
    assert up.after_eval({"eval/rewards/accuracies": 0.5}) is None
    assert up.after_eval({"eval/rewards/accuracies": 0.505}) == "early_stopping"  # below min_delta
