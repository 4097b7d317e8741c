"""run(): the stages in the order they happen, read top to bottom.

preflight (pure checks) -> Ray -> data stage (data/stage.py) -> reference stage (reference/stage.py)
-> train/eval split in the seeded order -> TorchTrainer (train/trainer.py, workers in train/loop.py)
-> outputs (outputs.py). A sweep (tune/driver.py) runs the first three once and hands every trial
the prepared datasets.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import ray
import ray.data

from dpo_ray import faults
from dpo_ray.config import Config
from dpo_ray.config_load import resolve_paths
from dpo_ray.console import start_ray
from dpo_ray.data.stage import prepare_pairs
from dpo_ray.outputs import local_output, write_outputs
from dpo_ray.paths import atomic_write
from dpo_ray.preflight import preflight
from dpo_ray.reference.stage import reference_stage
from dpo_ray.screen import follow
from dpo_ray.stats import DataStats, RefStats, StageStats, process_start_time
from dpo_ray.tracking import (LiveTracking, ProgressReports, finish_mlflow, finish_wandb, progress_channel, start_mlflow,
                              start_wandb, wandb_logger)
from dpo_ray.train.checkpoint import find_checkpoint
from dpo_ray.train.resources import resolve_auto
from dpo_ray.train.stopping import total_steps
from dpo_ray.train.trainer import build_trainer, fit, split_and_order


def run(
    config: Config,
    *,
    run_name: str | None = None,
    callbacks: Callable[[StageStats], list[Any]] | None = None,
    prepared: Prepared | None = None,
    tracking_group: str | None = None,
) -> dict[str, Any]:
    """Run the whole job; returns the summary that is also written to metrics.json.

    A sweep trial passes a stable Train ``run_name``,
    ``callbacks(stage_stats)`` -> Ray Train callbacks (its report to Tune), and, when the trials
    share one data and reference stage, the ``prepared`` datasets; ``tracking_group``: the sweep's
    W&B group.
    """
    cfg = resolve_paths(config)
    if prepared is None:  # a sweep trial on shared datasets: its driver checked them
        preflight(cfg)  # before Ray starts: one line for a missing model, data file, ...
    resume_path = find_checkpoint(cfg.train.resume_from) if cfg.train.resume_from else None
    with local_output(cfg.output_dir, cfg.overwrite_output_dir) as out:  # a staging folder for a URI
        return _run(cfg, out, resume_path, run_name, callbacks, prepared, tracking_group)


def _run(cfg: Config, out: Path, resume_path: str | None, run_name: str | None,
         callbacks: Callable[[StageStats], list[Any]] | None, prepared: Prepared | None,
         tracking_group: str | None) -> dict[str, Any]:
    started_at = time.time()
    log_dir = start_ray()
    ray_ready = time.time()
    cfg, auto_notes = resolve_auto(cfg, [node["Resources"] for node in ray.nodes() if node["Alive"]])
    started = time.perf_counter()
    timing = {"perf/started_time": started_at, "perf/ray_start_seconds": time.time() - started_at,
              **({"auto": "; ".join(auto_notes)} if auto_notes else {})}
    timing["ray/log_dir"] = log_dir  # the summary names it: Ray's own logs stay there
    timing.update({"startup/process_start": process_start_time(), "startup/run_called": started_at,
                   "startup/ray_ready": ray_ready})
    if prepared is None:
        prepared = prepare_datasets(cfg, out)
        timing["perf/prepare_seconds"] = time.perf_counter() - started  # data and reference stages
        timing.update(prepared.marks)
    else:  # this run scored and tokenized nothing: it reads what the shared stage prepared
        prepared = Prepared(prepared.train, prepared.eval, prepared.stats.reused())
    train_pairs = prepared.stats.epoch_train_pairs
    loop_extra = {
        "total_steps": total_steps(cfg.train, train_pairs),
        "steps_per_epoch": train_pairs // cfg.train.batch_size,
        "resume_path": resume_path,
        "faults": faults.from_env(),  # the test switch; {} in a user's run
    }
    name = run_name or cfg.output_dir.rstrip("/").rsplit("/", 1)[-1]
    mlflow_run, wandb_run = start_mlflow(cfg, name), start_wandb(cfg, name, out, tracking_group)
    live = LiveTracking(str(out), "tensorboard" in cfg.train.report_to, mlflow_run)
    progress = ProgressReports(progress_channel(out), loop_extra["total_steps"], cfg.train.batch_size,
                               forward_metrics=wandb_run is not None)
    trainer = build_trainer(cfg, prepared.train, prepared.eval, loop_extra, run_name=run_name,
                            callbacks=[live, progress, *(callbacks(prepared.stats) if callbacks else [])])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "config.yaml", cfg.to_yaml())  # now, so that an interrupted run can resume from it
    timing["startup/fit_called"] = time.time()
    try:
        with follow(progress.channel, sys.stderr, live=sys.stderr.isatty(),  # the driver prints the progress
                    on_metrics=wandb_logger(wandb_run) if wandb_run else None):
            result = fit(trainer, cfg, out, loop_extra["total_steps"])
        run_stats = {**prepared.stats.metrics(), **timing, "perf/total_seconds": time.perf_counter() - started,
                     **({"mlflow_run_id": mlflow_run.run_id} if mlflow_run else {}),
                     **({"wandb_run_id": wandb_run.id} if wandb_run else {})}
        summary = write_outputs(cfg, out, result, run_stats)
    except BaseException:
        finish_mlflow(mlflow_run, None, failed=True)
        finish_wandb(wandb_run, None, None, failed=True)
        raise
    finish_mlflow(mlflow_run, summary, failed=False)
    finish_wandb(wandb_run, summary, out / "curves.png", failed=False)
    return summary


@dataclass(frozen=True)
class Prepared:
    """What the data and reference stages hand to training: materialized datasets and their stats."""

    train: ray.data.Dataset
    eval: ray.data.Dataset
    stats: StageStats
    marks: dict[str, float] = field(default_factory=dict)  # startup/<stage>_done: Unix time (the timeline)


def prepare_datasets(cfg: Config, out: Path | None = None) -> Prepared:
    """Data stage, reference stage (cached), train/eval split, the seeded train order. ``cfg`` is
    resolved; data_report.json goes to ``out`` (default: output_dir, a local path)."""
    kept, data, data_id = prepare_pairs(cfg, out or Path(cfg.output_dir))
    marks = {"startup/data_done": time.time()}
    if cfg.loss.reference_free():
        scored, ref = kept, RefStats(skipped=True, cache_hit=False, seconds=0.0)
    else:
        scored, ref = reference_stage(cfg, kept, data_id)
    marks["startup/reference_done"] = time.time()
    train_ds, eval_ds, epoch_pairs = split_and_order(cfg, scored, data)
    marks["startup/split_done"] = time.time()
    return Prepared(train_ds, eval_ds, StageStats(data, ref, epoch_pairs), marks)


def precompute_reference(config: Config) -> tuple[DataStats, RefStats]:
    """The data and reference stages alone: warm the cache (before a sweep, say)."""
    cfg = resolve_paths(config)
    preflight(cfg, writes_model=False)
    start_ray()
    with local_output(cfg.output_dir, overwrite=True) as out:  # only data_report.json goes there
        kept, data, data_id = prepare_pairs(cfg, out)
        _, ref = reference_stage(cfg, kept, data_id)
    return data, ref
