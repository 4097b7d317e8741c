"""run_sweep refuses what it cannot do before Ray starts (importing tune/driver.py loads Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import sweep_file
from dpo_ray.config import ConfigError
from dpo_ray.tune.settings import load_sweep

def test_sweep_refuses_an_object_store_output_dir(tmp_path: Path) -> None:
    from dpo_ray.tune.driver import run_sweep

    base, settings = load_sweep(sweep_file(tmp_path), ["output_dir=s3://bucket/sweep"])
    with pytest.raises(ConfigError, match="output_dir s3://bucket/sweep: a sweep keeps its trials"):
        run_sweep(base, settings)  # refused before Ray starts
