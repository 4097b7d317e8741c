"""DeepSpeed config dict from the train config. Pure ring: no Ray import."""

from __future__ import annotations

from typing import Any

from dpo_ray.config import TrainConfig

MIN_BUCKET = 5_000_000  # elements: a floor so small models do not reduce in thousands of tiny pieces
LAYERS_LIVE = 2  # decoder layers' parameters ZeRO-3 keeps gathered
DEEPSPEED_LIVE_DEFAULT = 1_000_000_000  # DeepSpeed's stage3_max_live_parameters and stage3_max_reuse_distance


def build_ds_config(train: TrainConfig, hidden_size: int | None = None) -> dict[str, Any]:
    """ZeRO stage, batch arithmetic, clipping and precision for deepspeed.initialize.

    The optimizer and scheduler are passed to deepspeed.initialize as torch objects, so no
    "optimizer" section: DeepSpeed then needs no JIT-built FusedAdam (DeepSpeed builds FusedAdam's extension at first use).
    With the model's ``hidden_size``, ZeRO-3's buffers scale with the model as the HF Trainer's
    "auto" values do (reduce bucket hidden^2, prefetch 0.9 hidden^2, persistence 10 hidden), floored at
    MIN_BUCKET elements; DeepSpeed's defaults (a 5e8-element reduce bucket, 1.9 GiB in fp32, on
    every rank) would otherwise outweigh a small model's partitioned state.
    """
    stage = train.resolved_zero_stage()
    zero: dict[str, Any] = {"stage": stage}
    if stage == 3:
        # Gather the full weights at save time so export writes one HF model.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
        if hidden_size:
            zero["reduce_bucket_size"] = max(hidden_size * hidden_size, MIN_BUCKET)
            zero["stage3_prefetch_bucket_size"] = max(int(0.9 * hidden_size * hidden_size), MIN_BUCKET)
            zero["stage3_param_persistence_threshold"] = 10 * hidden_size
            # Gathered parameters kept live (and kept for reuse) at most about two decoder layers' worth
            # (a layer is ~12 hidden^2), capped at DeepSpeed's 1e9 default, which a 70B model reaches: at
            # the default a model under 1e9 parameters stays whole on every rank after its first forward.
            live = min(max(LAYERS_LIVE * 12 * hidden_size * hidden_size, MIN_BUCKET), DEEPSPEED_LIVE_DEFAULT)
            zero["stage3_max_live_parameters"] = live
            zero["stage3_max_reuse_distance"] = live
    if train.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if train.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        # Our torch AdamW steps the offloaded states on CPU; no DeepSpeedCPUAdam JIT build.
        "zero_force_ds_cpu_optimizer": False,
        "train_batch_size": train.batch_size,
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.gradient_accumulation_steps(),
        "gradient_clipping": train.gradient_clipping,
        "zero_optimization": zero,
        "bf16": {"enabled": train.use_gpu and train.bf16},
        # A client (torch) optimizer under ZeRO is fine; DeepSpeed only warns it is "untested".
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
