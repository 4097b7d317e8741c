"""Every dpo_ray module imports, the ones that talk to Ray included (that the others load no Ray, and which
files may import it: tests/unit/test_structure.py)."""

from __future__ import annotations

import importlib

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
