"""The pure ring imports no Ray; every module is imported by some test."""

from __future__ import annotations

import subprocess
import sys

import pytest

PURE = ["config", "data.parse", "data.rows", "train.collate", "train.logprobs", "train.losses", "train.metrics", "modeling",
        "train.ds_config", "toy", "summary", "reference.scorer", "tune.settings", "store", "plots", "preflight", "train.stopping"]
PURE += ["config_help", "screen"]  # what --help and the progress lines need: no Ray
PURE += ["data.tokenize", "data.formats", "data.report", "train.resources"]  # the row pipeline's pure halves and auto resources


@pytest.mark.parametrize("module", PURE)
def test_pure_module_does_not_import_ray(module: str) -> None:
    code = f"import sys, dpo_ray.{module}; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
