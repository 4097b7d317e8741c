"""run_sweep refuses what it cannot do before Ray starts (importing tune/driver.py loads Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dpo_ray.config import ConfigError
from dpo_ray.tune.settings import load_sweep

SPACE = {"loss.beta": {"loguniform": [0.01, 1.0]}, "train.learning_rate": {"loguniform": [1e-4, 3e-3]}}


def _sweep_file(tmp_path: Path, **tune: object) -> str:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"tune": {"search_space": SPACE, **tune}}))
    return str(path)


def test_sweep_refuses_an_object_store_output_dir(tmp_path: Path) -> None:
    from dpo_ray.tune.driver import run_sweep

    base, settings = load_sweep(_sweep_file(tmp_path), ["output_dir=s3://bucket/sweep"])
    with pytest.raises(ConfigError, match="output_dir s3://bucket/sweep: a sweep keeps its trials"):
        run_sweep(base, settings)  # refused before Ray starts
