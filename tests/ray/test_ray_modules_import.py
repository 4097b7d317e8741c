"""Every dpo_ray module imports, the ones that talk to Ray included (that the others load no Ray, and which
files may import it: tests/unit/test_structure.py)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from conftest import REPO

MODULES = sorted(".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
                 for p in (REPO / "dpo_ray").rglob("*.py"))


@pytest.mark.parametrize("module", MODULES)
def test_module_imports(module: str) -> None:
    importlib.import_module(module)


def test_orchestration_entry_points() -> None:
    import dpo_ray.run
    import dpo_ray.train.loop
    import dpo_ray.tune.driver

    assert callable(dpo_ray.train.loop.train_loop_per_worker)
    assert callable(dpo_ray.run.run) and callable(dpo_ray.tune.driver.run_sweep)


def test_the_driver_loads_no_model_library() -> None:
    """Issue 19: the driver, and Ray Train's controller, which unpickles the train function
    (train/trainer.py: _train_loop), import neither transformers nor PEFT nor DeepSpeed (seconds on a
    small CPU): the workers and the reference actors do. A fresh interpreter: this one has them loaded."""
    code = ("import sys, dpo_ray.run, dpo_ray.tune.driver, dpo_ray.train.trainer as t, cloudpickle; cloudpickle.loads(cloudpickle.dumps(t._train_loop)); "
            "print(sorted(m for m in ('transformers', 'peft', 'deepspeed') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
