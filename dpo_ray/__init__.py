"""dpo_ray: Ray-native DPO (Ray Data, a cached reference pass, Ray Train + DeepSpeed, Ray Tune)."""

__version__ = "0.1.0"
