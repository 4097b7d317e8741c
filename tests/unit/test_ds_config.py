from __future__ import annotations

from dpo_ray.config_load import load_config
from dpo_ray.train.ds_config import build_ds_config


def test_batch_arithmetic_and_stages() -> None:
    cfg = load_config(None, ["train.batch_size=32", "train.micro_batch_size=4", "train.num_workers=2", "train.zero_stage=3"])
    ds = build_ds_config(cfg.train)
    assert ds["train_batch_size"] == ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * 2
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert "optimizer" not in ds  # a torch optimizer is passed in: no FusedAdam JIT build
    assert "reduce_bucket_size" not in ds["zero_optimization"]  # no model size given: DeepSpeed's defaults
    sized = build_ds_config(cfg.train, hidden_size=4096)["zero_optimization"]
    assert sized["reduce_bucket_size"] == 4096**2 and sized["stage3_param_persistence_threshold"] == 40960
    assert sized["stage3_max_live_parameters"] == sized["stage3_max_reuse_distance"] == 24 * 4096**2  # two layers
    huge = build_ds_config(cfg.train, hidden_size=8192)["zero_optimization"]  # a 70B: DeepSpeed's default
    assert huge["stage3_max_live_parameters"] == huge["stage3_max_reuse_distance"] == 1_000_000_000
    assert build_ds_config(cfg.train, hidden_size=64)["zero_optimization"]["reduce_bucket_size"] == 5_000_000


def test_bf16_only_on_gpu() -> None:
    assert build_ds_config(load_config(None, ["train.use_gpu=false"]).train)["bf16"]["enabled"] is False
    assert build_ds_config(load_config(None, ["train.use_gpu=true"]).train)["bf16"]["enabled"] is True
    assert build_ds_config(load_config(None, ["train.use_gpu=true", "train.bf16=false"]).train)["bf16"]["enabled"] is False


def test_offload_settings() -> None:
    import pytest

    from dpo_ray.config import ConfigError

    ds = build_ds_config(load_config(None, ["train.use_gpu=true", "train.zero_stage=3", "train.offload_optimizer=true", "train.offload_params=true"]).train)
    assert ds["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert ds["zero_optimization"]["offload_param"] == {"device": "cpu", "pin_memory": True}
    with pytest.raises(ConfigError, match="need train.use_gpu=true"):
        load_config(None, ["train.offload_optimizer=true"])
    with pytest.raises(ConfigError, match="offload_params needs train.zero_stage=3"):
        load_config(None, ["train.use_gpu=true", "train.offload_params=true", "train.zero_stage=2"])
    auto = load_config(None, ["train.use_gpu=true", "train.offload_params=true"]).train  # zero_stage auto
    assert build_ds_config(auto)["zero_optimization"]["stage"] == 3
