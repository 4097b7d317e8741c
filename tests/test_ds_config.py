from __future__ import annotations

from dpo_ray.config import load_config
from dpo_ray.ds_config import build_ds_config


def test_batch_arithmetic_and_stages() -> None:
    cfg = load_config(None, ["train.batch_size=32", "train.micro_batch_size=4", "train.num_workers=2", "train.zero_stage=3"])
    ds = build_ds_config(cfg.train)
    assert ds["train_batch_size"] == ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * 2
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert "optimizer" not in ds  # a torch optimizer is passed in: no FusedAdam JIT build


def test_bf16_only_on_gpu() -> None:
    assert build_ds_config(load_config(None, ["train.use_gpu=false"]).train)["bf16"]["enabled"] is False
    assert build_ds_config(load_config(None, ["train.use_gpu=true"]).train)["bf16"]["enabled"] is True
    assert build_ds_config(load_config(None, ["train.use_gpu=true", "train.bf16=false"]).train)["bf16"]["enabled"] is False
