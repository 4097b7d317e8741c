"""The modules that talk to Ray import (the pure ones load no Ray: tests/unit/test_pure_ring.py)."""

from __future__ import annotations


def test_orchestration_modules_import() -> None:
    import dpo_ray.run
    import dpo_ray.tune.driver
    import dpo_ray.train.loop

    assert callable(dpo_ray.train.loop.train_loop_per_worker)
    assert callable(dpo_ray.run.run) and callable(dpo_ray.tune.driver.run_sweep)
