"""The train stage on Ray: the train/eval split in the seeded order (train/order.py is the
contract), one TorchTrainer whose workers run train/loop.py, and fit() with Ctrl+C turned into one
line. Every resource number comes from the config here."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import ray
import ray.data
from ray.data.expressions import col
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train import WorkerGroupError
from ray.train.torch import TorchTrainer

from dpo_ray.config import Config, ConfigError
from dpo_ray.config_check import PackingUnsupported
from dpo_ray.paths import is_remote, join
from dpo_ray.stats import DataStats
from dpo_ray.tracking import read_progress
from dpo_ray.train.checkpoint import checkpoint_step, latest_checkpoint
from dpo_ray.train.objective import REF_COLUMNS
from dpo_ray.train.order import add_order_key, eval_rounds, eval_starts, lane_starts, mixture_copies, mixture_rates
from dpo_ray.train.stopping import RunInterrupted, interrupted_message

TOKEN_COLUMNS = ["row_id", "prompt_ids", "chosen_ids", "rejected_ids", "mixture"]


# How often Ray Train's controller polls each worker; it takes one report a poll, and a worker's
# ray.train.report blocks until its previous report was taken. At Ray's default (every 2 s) a run that
# reports more often than that waits on the poll; a poll is one small actor call. An env var set by the
# user wins; Ray passes it on to the controller (ray.train.v2 ENV_VARS_TO_PROPAGATE).
POLL_ENV, POLL_SECONDS = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1"


def split_and_order(cfg: Config, scored: ray.data.Dataset, data: DataStats) -> tuple[ray.data.Dataset, ray.data.Dataset, int]:
    """The train set (mixture copies, then the seeded order) and the eval set, both materialized,
    and the pairs of one train epoch."""
    columns = TOKEN_COLUMNS + ([] if cfg.loss.reference_free() else list(REF_COLUMNS))
    eval_fraction = cfg.data.eval_fraction
    train_ds = scored.filter(expr=col("split_key") >= eval_fraction).select_columns(columns)
    if cfg.data.sources:
        train_ds = train_ds.map_batches(
            mixture_copies, fn_kwargs={"rates": mixture_rates(cfg, data.counts), "seed": cfg.train.seed}, batch_format="numpy")
    train_ds = deterministic_shuffle(train_ds, cfg.train.seed, drop=("copy",) if cfg.data.sources else ()).materialize()
    eval_ds = scored.filter(expr=col("split_key") < eval_fraction).select_columns(columns).materialize()
    return train_ds, eval_ds, train_ds.count() if cfg.data.sources else data.train_pairs


def deterministic_shuffle(ds: ray.data.Dataset, seed: int, drop: tuple[str, ...] = ()) -> ray.data.Dataset:
    """Shuffle by sorting on a seeded hash of each row id: the same order in every run, whatever
    the block layout upstream (Ray's random_shuffle depends on it), so restarts replay exactly.

    The sort uses Ray's task-based pull shuffle rather than Ray 2.60's default (hash-shuffle actors),
    which is several times slower at a preference set's size and slows the next dataset too
    (bench/PROFILE.md); a few thousand to a million rows are well within the task-based sort's range."""
    keyed = ds.map_batches(add_order_key, fn_kwargs={"seed": seed}, batch_format="numpy")
    # Not the process's DataContext: the copy a dataset chain takes when it is read, shared by every
    # dataset derived from it, so this chain's shuffles (this sort is its only one) use the pull shuffle.
    keyed.context.shuffle_strategy = ray.data.context.ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    return keyed.sort("_order").drop_columns(["_order", *drop])


def worker_datasets(cfg: Config, train_ds: ray.data.Dataset, eval_ds: ray.data.Dataset,
                    steps_per_epoch: int) -> tuple[dict[str, ray.data.Dataset], int]:
    """The train set cut into its lanes (``lane_<c>``) and the eval set into the ranks' shares
    (``eval_<r>``), by slicing the materialized, ordered datasets (train/order.py, points 3, 5 and 6):
    each worker reads only its own, 1/W of the rows. Also the eval forwards per rank."""
    micro, world = cfg.train.micro_batch_size, cfg.train.num_workers
    lanes = train_ds.split_at_indices(lane_starts(cfg, steps_per_epoch))[:-1]  # the last piece: the left-out tail
    eval_pairs = eval_ds.count()
    cuts = eval_starts(eval_pairs, micro, world)
    shares = eval_ds.split_at_indices(cuts) if cuts else [eval_ds]  # split_at_indices takes one cut or more
    datasets = {f"lane_{c}": lane for c, lane in enumerate(lanes)}
    datasets.update({f"eval_{r}": share for r, share in enumerate(shares)})
    return datasets, eval_rounds(eval_pairs, micro, world)


def build_trainer(cfg: Config, train_ds: ray.data.Dataset, eval_ds: ray.data.Dataset, loop_extra: dict[str, Any],
                  *, run_name: str | None = None, callbacks: list[Any] | None = None) -> TorchTrainer:
    """One TorchTrainer. Each worker gets its own lanes of the train set and its share of the eval
    set (worker_datasets): the same global batches in the same order in every run and for any
    worker count, so restarts replay exactly and no eval pair is dropped."""
    t = cfg.train
    os.environ.setdefault(POLL_ENV, POLL_SECONDS)
    datasets, rounds = worker_datasets(cfg, train_ds, eval_ds, int(loop_extra["steps_per_epoch"]))
    return TorchTrainer(
        _train_loop,
        train_loop_config={"config": cfg.to_dict(), **loop_extra, "eval_rounds": rounds},
        scaling_config=ScalingConfig(
            num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker={"CPU": t.cpus_per_worker},
            placement_strategy=t.placement_strategy,
        ),
        run_config=RunConfig(
            name=run_name or f"train-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=join(cfg.output_dir, "ray"),  # a URI output_dir: checkpoints go there directly
            checkpoint_config=CheckpointConfig(num_to_keep=t.num_to_keep),
            failure_config=FailureConfig(max_failures=t.max_failures),
            callbacks=callbacks,
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=[]),  # each worker reads only its own (loop.py)
    )


def _train_loop(loop_config: dict[str, Any]) -> None:
    """Each worker's entry: the loop's module (transformers, PEFT, DeepSpeed) is imported there, so the
    driver and Ray Train's controller, which unpickle this function, do not pay for it (issue 19)."""
    from dpo_ray.train.loop import train_loop_per_worker

    train_loop_per_worker(loop_config)


def fit(trainer: TorchTrainer, cfg: Config, out: Path, total: int) -> Any:
    """trainer.fit(), with Ctrl+C turned into RunInterrupted (one line: the step reached, how to
    resume). Ray Train's SIGINT handler aborts the worker group and ends fit() with SystemExit; a
    KeyboardInterrupt comes where that handler is not installed yet."""
    try:
        return trainer.fit()
    except WorkerGroupError as err:
        refusal = _packing_refusal(err)
        if refusal is None:
            raise
        raise ConfigError(refusal) from None  # one line, as for any setting that cannot work (pipelines/dpo.py)
    except (KeyboardInterrupt, SystemExit) as err:
        local = not is_remote(cfg.output_dir)  # train.resume_from takes a local or mounted path
        checkpoint = latest_checkpoint(out) if local else None
        # A checkpoint's report may reach the controller's callbacks (progress.json) after Ray has
        # stored its folder: the step reached is the furthest of the two.
        step = max(read_progress(out), checkpoint_step(checkpoint) if checkpoint else 0)
        raise RunInterrupted(interrupted_message(step, total, cfg.output_dir, checkpoint is not None)) from err


def _packing_refusal(err: WorkerGroupError) -> str | None:
    """The message of a worker's PackingUnsupported (train.padding_free on a model whose attention
    mixes packed sequences; modeling.check_packed_attention), if that is why the workers failed. Ray
    Train returns each worker's exception wrapped with its traceback text (UserExceptionWithTraceback)."""
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback

    for failure in err.worker_failures.values():
        base = failure._base_exc if isinstance(failure, UserExceptionWithTraceback) else failure  # Ray 2.60's wrapper
        if isinstance(base, PackingUnsupported):
            return str(base)
    return None
