"""Orchestration: a Ray Tune sweep over any config keys, at the price of one reference pass.

The data and reference stages run once before the first trial (run.precompute_reference), so
every trial reads the tokenized rows and the reference log-probs from the caches. One trial is one
run.run (a TorchTrainer with its own workers and checkpoints) inside a Tune function trainable
(the Train V2 pattern); the trial forwards each held-out evaluation to Tune, where ASHA may stop it.

Outputs under the sweep's output_dir: trials.csv, best_config.yaml, best_model/, heatmap.png,
sweep.json; Tune's own state under tune/ (what --resume restores) and each trial under trials/<id>/.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import ray
import yaml
from ray import tune
from ray.train.v2.api.callback import UserCallback

from dpo_ray.config import Config, ConfigError
from dpo_ray.config_load import resolve_paths
from dpo_ray.console import start_ray
from dpo_ray.paths import atomic_write, is_remote
from dpo_ray.plots import plot_sweep
from dpo_ray.preflight import preflight_sweep
from dpo_ray.run import Prepared, precompute_reference, prepare_datasets, run
from dpo_ray.stats import StageStats
from dpo_ray.tracking import is_number
from dpo_ray.tune.settings import TuneSettings, apply_params, sort_rows

STATE_FILE = "sweep_config.yaml"
"""The base config and tune settings, written when a sweep starts; --resume reads them back."""
DATASET_PREFIXES = ("data.", "model.", "reference.")
DATASET_KEYS = ("loss.type", "train.seed", "output_dir")
"""Searched keys that change the datasets a trial trains on (tokens, reference columns, order)."""
SHOWN = ("eval/rewards/accuracies", "eval/rewards/margins", "eval/loss", "train/steps", "ref/cache_hit")


class SweepInterrupted(RuntimeError):
    """The sweep stopped before every trial finished; it can be resumed."""


class _InterruptWatch(logging.Handler):
    """Sees Tune's "Experiment has been interrupted" warning: after a Ctrl+C, Tuner.fit() returns
    normally and marks the stopped trials TERMINATED in memory (RUNNING in the saved state, which
    --resume reruns), so the warning is the one sign that the sweep did not finish."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen = False

    def emit(self, record: logging.LogRecord) -> None:
        self.seen = self.seen or "has been interrupted" in record.getMessage()


class EvalToTune(UserCallback):
    """Ray Train callback: forward rank 0's reports that carry the objective (one per evaluation)
    to the Tune trial, with the trial's data and reference stage stats attached."""

    def __init__(self, metric: str, stage_stats: StageStats) -> None:
        from ray.train._internal.session import get_session

        self.metric = metric
        self.stats = {k: v for k, v in stage_stats.metrics().items() if isinstance(v, (int, float))}
        self.queue = get_session()._get_or_create_inter_actor_queue()

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if self.metric in metrics[0]:
            self.queue.put({**metrics[0], **self.stats})


def _trial(params: dict[str, Any], *, base: dict[str, Any], trials_dir: str, metric: str,
           prepared: Prepared | None, group: str) -> None:
    """One Tune trial: the base config with ``params`` set, trained in trials/<trial id>/ on the
    shared ``prepared`` datasets (or, when data-shaping keys are searched, on its own, cached)."""
    trial_id = tune.get_context().get_trial_id()
    cfg = apply_params(base, {**params, "output_dir": f"{trials_dir}/{trial_id}", "overwrite_output_dir": True})
    summary = run(cfg, run_name=f"trial-{trial_id}", callbacks=lambda stats: [EvalToTune(metric, stats)],
                  prepared=prepared, tracking_group=group)
    tune.report({k: v for k, v in summary.items() if is_number(v)})


def run_sweep(base: Config, settings: TuneSettings, *, resume: bool = False) -> dict[str, Any]:
    """Run (or resume) a sweep; returns what is written to sweep.json."""
    cfg = resolve_paths(base)
    preflight_sweep(cfg, settings)  # before Ray starts and before the sweep state is written
    if is_remote(cfg.output_dir):
        raise ConfigError(f"output_dir {cfg.output_dir}: a sweep keeps its trials and Tune state on a local or mounted "
                          "path (an NFS share on a cluster); single runs (pipelines/dpo.py) take s3:// and gs://")
    out = Path(cfg.output_dir)
    tune_dir = out / "tune"
    started = time.perf_counter()
    if resume:
        if not tune.Tuner.can_restore(str(tune_dir)):
            raise ConfigError(f"--resume {out}: no sweep state under {tune_dir}; start a new sweep instead")
    elif tune_dir.exists() and not cfg.overwrite_output_dir:
        raise ConfigError(f"output_dir {out} already holds a sweep; continue it with --resume {out}, "
                          "or choose another output_dir, or set overwrite_output_dir=true")
    elif tune_dir.exists():
        shutil.rmtree(tune_dir)
        shutil.rmtree(out / "trials", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        atomic_write(out / STATE_FILE, yaml.safe_dump({**cfg.to_dict(), "tune": settings.to_dict()}, sort_keys=False))
    start_ray()
    if cfg.train.cpus_per_worker == "auto":  # trials run side by side: one CPU a worker unless the user sets more
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, cpus_per_worker=1))

    # The data and reference stages run once, here, before the first trial. When no searched key
    # shapes the datasets, every trial trains on these very datasets; otherwise each trial runs its
    # own stages, which hit the caches this pass filled (for the base values).
    prepared = prepare_datasets(cfg) if shares_datasets(settings) else None
    ref = prepared.stats.ref if prepared else (None if cfg.loss.reference_free() else precompute_reference(cfg)[1])
    precomputed = int(ref is not None and not ref.cache_hit and not ref.skipped)
    _append_jsonl(out / "precompute.jsonl", {"scored": precomputed, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    mode = settings.resolved_mode()
    if not resume:
        print(f"sweep: {settings.trial_plan()}", file=sys.stderr, flush=True)
    trainable = tune.with_resources(
        tune.with_parameters(_trial, base=cfg.to_dict(), trials_dir=str(out / "trials"), metric=settings.metric,
                             prepared=prepared,  # W&B: the sweep's trials in one group (WANDB_RUN_GROUP, if set)
                             group=os.environ.get("WANDB_RUN_GROUP", f"{out.name}-{time.strftime('%Y%m%d-%H%M%S')}")),
        {"cpu": 0, "memory": 1},  # the trial only drives (0 CPU; Tune needs some resource): its Train workers hold the CPUs/GPUs
    )
    if resume:
        tuner = tune.Tuner.restore(str(tune_dir), trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=_param_space(settings),
            tune_config=tune.TuneConfig(
                metric=settings.metric, mode=mode, search_alg=_searcher(settings, mode, max_concurrent(cfg, settings)),
                scheduler=_scheduler(settings), num_samples=settings.samples(),
            ),
            run_config=tune.RunConfig(name="tune", storage_path=str(out)),
        )
    interrupt = _InterruptWatch()
    logging.getLogger("ray.tune.tune").addHandler(interrupt)
    try:
        grid = tuner.fit()
    finally:
        logging.getLogger("ray.tune.tune").removeHandler(interrupt)
    trials = grid._experiment_analysis.trials  # same order as the ResultGrid's results
    unfinished = [t for t in trials if t.status not in ("TERMINATED", "ERROR")]
    if interrupt.seen or unfinished:
        done = sum(1 for t in trials if (out / "trials" / t.trial_id / "metrics.json").exists())
        raise SweepInterrupted(f"sweep interrupted with {done} of {len(trials)} trials finished; "
                               f"continue it with: python pipelines/sweep.py --resume {out}")
    rows = [_trial_row(out, settings, trial, result) for trial, result in zip(trials, grid)]
    return _write_outputs(out, settings, rows, time.perf_counter() - started)


def shares_datasets(settings: TuneSettings) -> bool:
    """True when no searched key changes the tokenized, scored or ordered pairs."""
    return not any(k.startswith(DATASET_PREFIXES) or k in DATASET_KEYS for k in settings.search_space)


def _param_space(settings: TuneSettings) -> dict[str, Any]:
    def domain(spec: dict[str, list]) -> Any:
        kind, values = next(iter(spec.items()))
        if kind == "grid" or (kind == "choice" and settings.searcher == "grid"):
            return tune.grid_search(values)
        if kind == "choice":
            return tune.choice(values)
        if kind == "randint":
            return tune.randint(values[0], values[1] + 1)  # Tune's upper bound is exclusive
        low, high = float(values[0]), float(values[1])
        return tune.loguniform(low, high) if kind == "loguniform" else tune.uniform(low, high)

    return {key: domain(spec) for key, spec in settings.search_space.items()}


def _searcher(settings: TuneSettings, mode: str, concurrent: int) -> Any:
    """The search algorithm, limited to ``concurrent`` running trials (TuneConfig.max_concurrent_trials
    is ignored when a BasicVariantGenerator is passed in, so the limit goes here)."""
    if settings.searcher == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(metric=settings.metric, mode=mode, seed=settings.seed), concurrent)  # TPE
    return tune.search.BasicVariantGenerator(random_state=settings.seed, max_concurrent=concurrent)


def _scheduler(settings: TuneSettings) -> Any:
    if settings.scheduler == "none":
        return None
    # Each Tune result is one evaluation (EvalToTune), so ASHA's rungs are counted in evaluations.
    return tune.schedulers.ASHAScheduler(time_attr="training_iteration", max_t=10_000,
                                         grace_period=settings.grace_period, reduction_factor=settings.reduction_factor)


def max_concurrent(cfg: Config, settings: TuneSettings) -> int:
    """tune.max_concurrent_trials, or as many trials as the cluster's resources hold side by side
    (on an autoscaling cluster whose GPU workers start at zero, set it explicitly)."""
    if settings.max_concurrent_trials:
        return settings.max_concurrent_trials
    t = cfg.train
    resources = ray.cluster_resources()
    fits = int(resources.get("CPU", 0) // (t.num_workers * t.cpus_per_worker))
    if t.use_gpu:
        fits = min(fits, int(resources.get("GPU", 0) // t.num_workers))
    return max(1, fits)


def _trial_row(out: Path, settings: TuneSettings, trial: Any, result: Any) -> dict[str, Any]:
    """One line of trials.csv: the trial's searched values and its last reported metrics."""
    metrics, config = result.metrics or {}, result.config or {}
    error = str(result.error).strip().splitlines() if result.error else []
    return {
        "trial_id": trial.trial_id, "status": trial.status,
        "finished": (out / "trials" / trial.trial_id / "model").is_dir(), "error": error[-1][:300] if error else "",
        **{k: config.get(k) for k in settings.search_space},
        **{k: v for k, v in metrics.items() if is_number(v) and "/" in k},
    }


def _write_outputs(out: Path, settings: TuneSettings, rows: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    metric, mode = settings.metric, settings.resolved_mode()
    keys = list(settings.search_space)
    rows = sort_rows(rows, metric, mode)
    finished = [r for r in rows if r["finished"] and isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
    if not finished:
        first_error = next((r["error"] for r in rows if r["error"]), "no trial finished")
        raise RuntimeError(f"sweep: no trial finished with a model ({first_error}); see {out / 'tune'}")
    best = finished[0]
    _write_trials_csv(out / "trials.csv", rows, keys, metric)
    print(format_table(rows, keys, metric), flush=True)

    best_dir = out / "trials" / best["trial_id"]
    best_cfg = yaml.safe_load((best_dir / "config.yaml").read_text())
    best_cfg.update(output_dir=str(out / "best_rerun"), overwrite_output_dir=False)
    atomic_write(out / "best_config.yaml", yaml.safe_dump(best_cfg, sort_keys=False))
    staged = out / ".best_model.partial"
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(best_dir / "model", staged)
    shutil.rmtree(out / "best_model", ignore_errors=True)
    staged.rename(out / "best_model")
    if not settings.keep_trial_models:
        for row in rows:
            shutil.rmtree(out / "trials" / row["trial_id"] / "model", ignore_errors=True)
    numeric = [k for k in keys if all(isinstance(r.get(k), (int, float)) for r in rows)]
    if numeric:
        plot_sweep(rows, numeric[:2], metric, out / "heatmap.png")

    scored_before = sum(json.loads(line)["scored"] for line in (out / "precompute.jsonl").read_text().splitlines())
    scored_in_trials = sum(1 for r in rows if r.get("ref/cache_hit") == 0.0 and r.get("ref/skipped") == 0.0)
    summary = {
        "objective": metric, "mode": mode, "best_trial": best["trial_id"], "best_value": best[metric],
        "best_params": {k: best[k] for k in keys}, "best_model": str(out / "best_model"),
        "best_config": str(out / "best_config.yaml"),
        "ref/scoring_runs": scored_before + scored_in_trials,
        "trials": len(rows), "trials_finished": len(finished),
        "trials_stopped_early": sum(1 for r in rows if r["status"] == "TERMINATED" and not r["finished"]),
        "trials_errored": sum(1 for r in rows if r["status"] == "ERROR"),
        "seconds": seconds,
    }
    atomic_write(out / "sweep.json", json.dumps(summary, indent=2))
    return summary


def _write_trials_csv(path: Path, rows: list[dict[str, Any]], keys: list[str], metric: str) -> None:
    fixed = ["trial_id", "status", "finished", *keys, metric]
    rest = sorted({k for r in rows for k in r} - set(fixed) - {"error"})
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*fixed, *rest, "error"])
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def format_table(rows: list[dict[str, Any]], keys: list[str], metric: str) -> str:
    columns = ["trial_id", *keys, metric, *[c for c in SHOWN if c != metric], "status"]
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "" if value is None else str(value)
    table = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(t, widths)) for t in table]
    return "\n".join(lines)


def _append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
