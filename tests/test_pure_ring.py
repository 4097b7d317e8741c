"""The pure ring imports no Ray; every module is imported by some test."""

from __future__ import annotations

import subprocess
import sys

import pytest

PURE = ["config", "data", "row_tasks", "collate", "logprobs", "losses", "metrics", "modeling", "ds_config", "toy", "summary", "reference", "sweep_config", "ref_cache", "plots", "preflight", "stopping"]
PURE += ["config_help", "screen"]  # what --help and the progress lines need: no Ray
PURE += ["tokenization", "formats", "data_report", "resources"]  # the row pipeline's pure halves and auto resources


@pytest.mark.parametrize("module", PURE)
def test_pure_module_does_not_import_ray(module: str) -> None:
    code = f"import sys, dpo_ray.{module}; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_orchestration_modules_import() -> None:
    import dpo_ray.pipeline
    import dpo_ray.sweep
    import dpo_ray.train_loop

    assert callable(dpo_ray.train_loop.train_loop_per_worker)
    assert callable(dpo_ray.pipeline.run) and callable(dpo_ray.sweep.run_sweep)
