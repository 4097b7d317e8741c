"""Sweeps: the tune settings (pure); run_sweep's refusals: tests/ray/test_sweep_driver.py; pipelines/sweep.py end to end: tests/e2e/test_sweep_run.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import REPO, sweep_file
from dpo_ray.config import ConfigError
from dpo_ray.tune.settings import load_sweep, sort_rows

def test_sweep_yaml_and_overrides(tmp_path: Path) -> None:
    base, settings = load_sweep(sweep_file(tmp_path), ["train.max_steps=7", "tune.num_samples=3",
                                                        "tune.search_space.loss.label_smoothing={choice: [0.0, 0.1]}"])
    assert base.train.max_steps == 7 and settings.num_samples == 3
    assert settings.search_space["loss.label_smoothing"] == {"choice": [0.0, 0.1]}
    assert settings.resolved_mode() == "max" and settings.samples() == 3
    assert load_sweep(str(REPO / "pipelines" / "configs" / "sweep.yaml"), [])[1].searcher == "optuna"


def test_the_readme_grid_runs_each_point_once_and_says_so() -> None:
    shipped = str(REPO / "pipelines" / "configs" / "sweep.yaml")
    grid = ["tune.searcher=grid", "tune.search_space.loss.beta={grid: [0.05, 0.1, 0.3]}",
            "tune.search_space.train.learning_rate={grid: [3e-4, 1e-3]}"]
    settings = load_sweep(shipped, grid)[1]
    assert settings.samples() == 1
    assert settings.trial_plan() == "6 trials: a grid of 3 x 2 = 6 points, each once (tune.num_samples=N repeats the grid)"
    repeated = load_sweep(shipped, [*grid, "tune.num_samples=2"])[1]
    assert repeated.trial_plan() == "12 trials: a grid of 3 x 2 = 6 points, each 2 times (tune.num_samples=2)"
    assert load_sweep(shipped, [])[1].trial_plan() == "8 trials, optuna search (tune.num_samples unset: 8)"


@pytest.mark.parametrize(("overrides", "message"), [
    (["tune.metric=eval/loss"], "tune.metric=eval/loss is not comparable across trials that change loss.beta"),
    (["tune.metric=eval/rewards/margins"], "its scale moves with beta"),
    (["tune.metric=train/loss"], "tune.metric='train/loss': must be a held-out eval/ metric"),
    (["tune.searcher=grid"], "tune.searcher=grid: every tune.search_space entry must be {grid: [...]}"),
    (["tune.searcher=optuna", "tune.search_space.loss.beta={grid: [0.1, 0.2]}"], "tune.searcher=optuna cannot search a {grid"),
    (["tune.search_space.loss.beta={loguniform: [0, 1]}"], "tune.search_space.loss.beta: needs low < high and low > 0"),
    (["tune.search_space.loss.beta={normal: [0, 1]}"], "tune.search_space.loss.beta={'normal': [0, 1]}: expected one of"),
    (["tune.search_space.train.learning_rate={grid: [0.001, -1]}"], "tune.search_space.train.learning_rate: value -1 is not a valid config: train.learning_rate=-1"),
    (["tune.search_space.train.max_stepz={grid: [1]}"], "tune.search_space.train.max_stepz: value 1 is not a valid config: unknown config key 'train.max_stepz'"),
    (["tune.num_samples=0"], "tune.num_samples=0: must be >= 1"),
    (["tune.searchr=grid"], "unknown config key 'tune.searchr'"),
])
def test_bad_sweep_settings_name_the_key(tmp_path: Path, overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_sweep(sweep_file(tmp_path), overrides)
    assert message in str(err.value)


def test_eval_loss_is_allowed_when_the_loss_is_not_searched(tmp_path: Path) -> None:
    path = tmp_path / "lr.yaml"
    path.write_text(yaml.safe_dump({"tune": {"metric": "eval/loss", "search_space": {"train.learning_rate": {"grid": [1e-4, 1e-3]}}}}))
    _, settings = load_sweep(str(path), [])
    assert settings.resolved_mode() == "min"


def test_rows_sort_best_first_with_missing_values_last() -> None:
    rows = [{"m": 0.5}, {"m": float("nan")}, {"m": 0.9}, {}, {"m": 0.7}]
    assert [r.get("m") for r in sort_rows(rows, "m", "max")][:3] == [0.9, 0.7, 0.5]
    assert [r.get("m") for r in sort_rows(rows, "m", "min")][:3] == [0.5, 0.7, 0.9]
