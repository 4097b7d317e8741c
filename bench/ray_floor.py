"""Ray's own floor under the time to the first step (issue 19): a fresh Python process imports Ray
Train, calls ray.init() as pipelines/dpo.py does, and fits a TorchTrainer with the quickstart's
worker group (2 workers, 1 CPU each, gloo) whose loop only notes the time it was entered.

python bench/ray_floor.py --out /tmp/floor.json [--workers 2]

No model, data, DeepSpeed or dpo_ray code: what any pipeline built on Ray Train pays on this machine
before its own first line runs in a worker. bench/startup.py runs it beside the dpo_ray and TRL arms.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any


def _loop(config: dict[str, Any]) -> None:
    import ray.train

    if ray.train.get_context().get_world_rank() == 0:
        Path(config["entered"]).write_text(str(time.time()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    imported = time.time()
    if not ray.is_initialized():  # a fresh local Ray, as pipelines/dpo.py starts one (dpo_ray/console.py)
        ray.init(log_to_driver=False)
    ray_ready = time.time()
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")  # as dpo_ray/train/trainer.py sets it
    with tempfile.TemporaryDirectory(prefix="ray-floor-") as tmp:
        entered = Path(tmp) / "entered"
        trainer = TorchTrainer(_loop, train_loop_config={"entered": str(entered)},
                               scaling_config=ScalingConfig(num_workers=args.workers, resources_per_worker={"CPU": 1}),
                               run_config=RunConfig(name=f"floor-{time.time_ns()}", storage_path=str(Path(tmp) / "ray")))
        fit_called = time.time()
        trainer.fit()
        loop_entered = float(entered.read_text())
    args.out.write_text(json.dumps({"imported": imported, "ray_ready": ray_ready, "fit_called": fit_called,
                                    "loop_entered": loop_entered, "workers": args.workers}) + "\n")


if __name__ == "__main__":
    main()
