"""Where the reference model runs: the actor pool's resource request, and whether a model spread over
an actor's GPUs (reference.num_gpus_per_actor > 1, accelerate's device_map) landed on them.

Pure ring: no Ray import, no CUDA needed (devices are plain torch.device values here).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dpo_ray.config import ReferenceConfig

if TYPE_CHECKING:  # annotations only: the driver's preflight imports this module without loading torch
    import torch


@dataclass(frozen=True)
class PoolPlan:
    """map_batches(compute=ActorPoolStrategy(min_size, max_size), num_gpus=num_gpus_per_actor)."""

    min_size: int
    max_size: int
    num_gpus_per_actor: float
    fits_now: int | None
    """Actors the nodes' GPUs hold side by side now (each actor's GPUs on one node); None on CPU."""
    warning: str | None
    """Set when fewer than min_size actors fit the nodes now: the pool waits for an autoscaler."""


def pool_plan(ref: ReferenceConfig, node_gpus: list[float]) -> PoolPlan:
    """The pool's request from reference.* and the GPUs of each alive node (``node_gpus``).

    An actor's GPUs must all sit on one node (Ray places an actor on one node), so a node with g GPUs
    holds floor(g / k) actors of k GPUs each; fractional k <= 1 packs several actors on one GPU.
    max_size is kept as configured: on an autoscaling cluster more nodes may come.
    """
    k = ref.num_gpus_per_actor
    if k == 0:
        return PoolPlan(ref.min_actors, ref.max_actors, 0.0, None, None)
    fits = sum(math.floor(g / k + 1e-9) for g in node_gpus)
    warning = None
    if fits < ref.min_actors:
        warning = (f"reference: reference.min_actors={ref.min_actors} actors x reference.num_gpus_per_actor={k:g} GPUs "
                   f"(on one node each) do not fit the nodes' GPUs now ({sorted(node_gpus, reverse=True)}: {fits} fit); "
                   f"the pool waits for nodes an autoscaler adds, or lower reference.min_actors / num_gpus_per_actor")
    return PoolPlan(ref.min_actors, ref.max_actors, k, fits, warning)


def spreads(num_gpus_per_actor: float) -> bool:
    """Whether one model is spread over the actor's GPUs with device_map (more than one GPU each)."""
    return num_gpus_per_actor > 1


def off_gpu_parameters(named_devices: Iterable[tuple[str, torch.device]]) -> list[str]:
    """Parameters not on a GPU. device_map='auto' spills what the actor's GPUs cannot hold to the CPU or
    disk (accelerate then keeps those weights on the meta device and streams them in every forward)."""
    return [name for name, device in named_devices if device.type != "cuda"]


def check_on_gpus(named_devices: Iterable[tuple[str, torch.device]], num_gpus: int, name_or_path: str) -> None:
    """A reference model spread with device_map='auto' must sit wholly on the actor's GPUs."""
    off = off_gpu_parameters(named_devices)
    if off:
        raise RuntimeError(
            f"reference: model.name_or_path={name_or_path} does not fit on the actor's {num_gpus} GPUs "
            f"({len(off)} weights went to CPU/disk, first {off[0]}); raise reference.num_gpus_per_actor "
            f"(or reference.dtype=bfloat16 where it is float32)")
