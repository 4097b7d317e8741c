"""A reference model larger than one GPU (issue 18): the actor pool's request, the spread checks, and
the scorer's refusals, as logic (no GPU here; devices are plain torch.device values)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from dpo_ray.config import ConfigError, ReferenceConfig
from dpo_ray.preflight import check_spread_support
from dpo_ray.reference.placement import check_on_gpus, off_gpu_parameters, pool_plan, spreads
from dpo_ray.reference.scorer import ReferenceScorer


def test_cpu_pool_is_the_config() -> None:
    plan = pool_plan(ReferenceConfig(min_actors=1, max_actors=3), node_gpus=[0.0, 0.0])
    assert (plan.min_size, plan.max_size, plan.num_gpus_per_actor, plan.fits_now, plan.warning) == (1, 3, 0.0, None, None)


@pytest.mark.parametrize(("gpus", "nodes", "fits"), [
    (1.0, [8.0, 8.0], 16),
    (0.5, [1.0], 2),  # two actors share one GPU
    (2.0, [8.0, 4.0], 6),
    (4.0, [8.0, 2.0], 2),  # the 2-GPU node holds no 4-GPU actor
    (8.0, [4.0, 4.0], 0),  # an actor's GPUs sit on one node: 8 do not span two 4-GPU nodes
])
def test_actors_that_fit_count_whole_actors_per_node(gpus: float, nodes: list[float], fits: int) -> None:
    plan = pool_plan(ReferenceConfig(min_actors=1, max_actors=16, num_gpus_per_actor=gpus), nodes)
    assert plan.fits_now == fits and plan.num_gpus_per_actor == gpus
    assert (plan.min_size, plan.max_size) == (1, 16)  # max kept: an autoscaler may add nodes
    assert (plan.warning is None) == (fits >= 1)


def test_too_few_gpus_for_min_actors_is_said() -> None:
    plan = pool_plan(ReferenceConfig(min_actors=3, max_actors=4, num_gpus_per_actor=4), [8.0, 2.0])
    assert plan.fits_now == 2
    assert plan.warning is not None and "reference.min_actors=3" in plan.warning and "2 fit" in plan.warning


@pytest.mark.parametrize(("gpus", "ok"), [(0.0, True), (0.25, True), (1.0, True), (2.0, True), (8.0, True), (1.5, False), (2.5, False)])
def test_num_gpus_above_one_is_whole(gpus: float, ok: bool) -> None:
    if ok:
        assert ReferenceConfig(num_gpus_per_actor=gpus).num_gpus_per_actor == gpus
    else:
        with pytest.raises(ConfigError, match="reference.num_gpus_per_actor=.*whole number"):
            ReferenceConfig(num_gpus_per_actor=gpus)


def test_spreads_only_above_one_gpu() -> None:
    assert [spreads(g) for g in (0.0, 0.5, 1.0, 2.0, 4.0)] == [False, False, False, True, True]


def test_weights_off_the_gpus_are_refused() -> None:
    on = [("model.embed_tokens.weight", torch.device("cuda", 0)), ("lm_head.weight", torch.device("cuda", 1))]
    assert off_gpu_parameters(on) == []
    check_on_gpus(on, 2, "big-model")  # all on the actor's GPUs: no error
    spilled = [*on, ("model.layers.79.mlp.up_proj.weight", torch.device("meta")), ("model.norm.weight", torch.device("cpu"))]
    assert off_gpu_parameters(spilled) == ["model.layers.79.mlp.up_proj.weight", "model.norm.weight"]
    with pytest.raises(RuntimeError, match=r"big-model does not fit on the actor's 2 GPUs \(2 weights .* first "
                                           r"model.layers.79.mlp.up_proj.weight\); raise reference.num_gpus_per_actor"):
        check_on_gpus(spilled, 2, "big-model")


def test_spreading_without_accelerate_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else real(name, *a))
    with pytest.raises(ConfigError, match=r"^reference.num_gpus_per_actor=2: .* needs accelerate .*; pip install accelerate"):
        check_spread_support(2.0, reference_free=False)
    check_spread_support(1.0, reference_free=False)  # one GPU: no device_map
    check_spread_support(2.0, reference_free=True)  # no reference model is loaded


def test_accelerate_is_installed() -> None:
    assert importlib.util.find_spec("accelerate") is not None  # a dependency (pyproject) for device_map
    check_spread_support(4.0, reference_free=False)


def test_scorer_refuses_more_gpus_than_it_sees(tiny_model_dir: str) -> None:
    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has the GPUs")
    with pytest.raises(RuntimeError, match=r"the actor sees \d+ GPUs, reference.num_gpus_per_actor=2 asked for more"):
        ReferenceScorer(tiny_model_dir, None, "auto", use_gpu=True, num_gpus=2)


def test_scorer_without_gpus_ignores_num_gpus(tiny_model_dir: str) -> None:
    scorer = ReferenceScorer(tiny_model_dir, None, "auto", use_gpu=False, num_gpus=2)
    assert scorer.device == torch.device("cpu") and scorer.model.dtype == torch.float32
    assert {p.device for p in scorer.model.parameters()} == {torch.device("cpu")}


def test_a_tracker_without_its_package_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from dpo_ray.preflight import check_trackers

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    check_trackers(["tensorboard", "mlflow"])
    with pytest.raises(ConfigError, match=r'^train.report_to has wandb, but the wandb package is not installed: pip install -e "\.\[wandb\]"'):
        check_trackers(["tensorboard", "wandb"])

