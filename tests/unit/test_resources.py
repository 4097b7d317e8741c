"""auto train.cpus_per_worker and train.zero_stage against node lists (pure: no Ray)."""

from __future__ import annotations

import pytest

from dpo_ray.config_load import load_config
from dpo_ray.train.ds_config import build_ds_config
from dpo_ray.train.resources import auto_cpus_per_worker, resolve_auto

pytestmark = pytest.mark.unit


def train(*overrides: str):
    return load_config(None, list(overrides)).train


@pytest.mark.parametrize(("workers", "nodes", "strategy", "expected"), [
    (1, [2], "PACK", 2),            # one worker gets the whole 2-core machine
    (2, [2], "PACK", 1),            # two share it
    (3, [2], "PACK", 1),            # more workers than CPUs: 1 each (Ray then waits for room)
    (1, [16], "PACK", 16),
    (4, [8, 8], "PACK", 4),         # two workers on each node, 4 CPUs each
    (3, [8, 8], "PACK", 4),         # 5 CPUs would not place the third worker (8 // 5 = 1 a node)
    (2, [0, 8, 8], "PACK", 8),      # a head with CPU: 0 runs nothing
    (2, [16, 4], "STRICT_SPREAD", 4),  # one worker a node: the smaller node bounds it
    (2, [16, 4], "PACK", 8),
    (2, [8, 8], "STRICT_PACK", 4),  # both on one node: 8 CPUs each would never place
])
def test_cpus_are_shared_among_the_workers_placed(workers: int, nodes: list[int], strategy: str, expected: int) -> None:
    t = train(f"train.num_workers={workers}", f"train.batch_size={8 * workers}", f"train.placement_strategy={strategy}")
    cpus, why = auto_cpus_per_worker(t, [{"CPU": float(n)} for n in nodes])
    assert cpus == expected, why


def test_gpu_workers_take_the_nodes_cpus_per_gpu_capped() -> None:
    t = train("train.use_gpu=true", "train.num_workers=4")
    assert auto_cpus_per_worker(t, [{"CPU": 2.0}, {"CPU": 48.0, "GPU": 8.0}])[0] == 6
    assert auto_cpus_per_worker(t, [{"CPU": 96.0, "GPU": 4.0}])[0] == 8
    assert auto_cpus_per_worker(t, [{"CPU": 4.0}]) == (1, "no GPU node is up yet")


@pytest.mark.parametrize(("overrides", "stage"), [
    (["train.num_workers=1"], 0),
    (["train.num_workers=2"], 2),
    (["train.num_workers=1", "train.nonfinite=skip"], 1),
    (["train.num_workers=1", "train.zero_stage=2"], 2),  # a user's stage wins
    (["train.num_workers=2", "train.zero_stage=0"], 0),
])
def test_zero_stage_auto(overrides: list[str], stage: int) -> None:
    t = train(*overrides)
    assert t.resolved_zero_stage() == stage == build_ds_config(t)["zero_optimization"]["stage"]


def test_resolve_auto_writes_numbers_and_says_what_it_chose() -> None:
    cfg = load_config(None, ["train.num_workers=1"])
    assert cfg.train.cpus_per_worker == "auto" and cfg.train.zero_stage == "auto"  # the defaults
    resolved, notes = resolve_auto(cfg, [{"CPU": 2.0, "memory": 1e9}])
    assert (resolved.train.cpus_per_worker, resolved.train.zero_stage) == (2, 0)
    assert notes == ["train.cpus_per_worker=2 (2 CPUs on the node for 1 worker)",
                     "train.zero_stage=0 (1 rank: ZeRO would partition nothing)"]
    assert load_config(None, [f"train.{k}={v}" for k, v in resolved.to_dict()["train"].items()
                              if k in ("cpus_per_worker", "zero_stage")]).train.zero_stage == 0  # the YAML round-trips
    kept, notes = resolve_auto(load_config(None, ["train.cpus_per_worker=1", "train.zero_stage=2"]), [{"CPU": 8.0}])
    assert (kept.train.cpus_per_worker, kept.train.zero_stage, notes) == (1, 2, [])
