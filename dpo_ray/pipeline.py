"""Orchestration: Ray Data plan -> reference actor pool -> TorchTrainer -> outputs.

Every resource number is set here, from the config. pipelines/dpo.py only parses and prints.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import ray
import ray.data
from ray.train import CheckpointConfig, DataConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from dpo_ray.config import Config, ConfigError, resolve_paths
from dpo_ray.data import DataError, TokenizeRows, expand_paths, parse_file
from dpo_ray.objective import REF_COLUMNS
from dpo_ray.reference import ReferenceScorer
from dpo_ray.train_loop import train_loop_per_worker

TOKEN_COLUMNS = ["row_id", "prompt_ids", "chosen_ids", "rejected_ids"]


def run(config: Config) -> dict[str, Any]:
    """Run the whole job; returns the summary that is also written to metrics.json."""
    cfg = resolve_paths(config)
    out = Path(cfg.output_dir)
    _check_output_dir(out, cfg.overwrite_output_dir)
    files = expand_paths(cfg.data.path)
    if not ray.is_initialized():
        ray.init()  # joins RAY_ADDRESS / a running cluster, else starts a local Ray
    # Progress bars help in a terminal and flood a log file or `ray job logs`.
    ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty()
    started = time.perf_counter()

    tokenized = tokenize(cfg, files).materialize()
    counts = _count_rows(tokenized, cfg)

    ref_start = time.perf_counter()
    kept = tokenized.filter(lambda row: row["drop_reason"] == "")
    columns = TOKEN_COLUMNS + ([] if cfg.loss.reference_free() else list(REF_COLUMNS))
    scored = kept if cfg.loss.reference_free() else score_reference(cfg, kept).materialize()
    ref_seconds = time.perf_counter() - ref_start

    train_ds = scored.filter(lambda row: not row["is_eval"]).select_columns(columns)
    train_ds = train_ds.random_shuffle(seed=cfg.train.seed).materialize()
    eval_ds = scored.filter(lambda row: row["is_eval"]).select_columns(columns).materialize()
    result = build_trainer(cfg, train_ds, eval_ds).fit()

    run_stats = {
        **counts, "ref/seconds": ref_seconds, "ref/skipped": float(cfg.loss.reference_free()),
        "perf/total_seconds": time.perf_counter() - started,
    }
    return _write_outputs(cfg, out, result, run_stats)


def tokenize(cfg: Config, files: list[str]) -> ray.data.Dataset:
    """Files -> validated text rows (tasks) -> token ids, row ids, split flags (tokenizer actors)."""
    raw = ray.data.read_binary_files(files, include_paths=True)
    rows = raw.flat_map(lambda rec: parse_file(rec["path"], rec["bytes"]))
    return rows.map_batches(
        TokenizeRows,
        fn_constructor_kwargs={
            "name_or_path": cfg.model.name_or_path, "revision": cfg.model.revision,
            "max_length": cfg.data.max_length, "eval_fraction": cfg.data.eval_fraction,
        },
        compute=ray.data.ActorPoolStrategy(size=cfg.data.tokenize_actors),
        batch_size=cfg.data.tokenize_batch_size,
        batch_format="numpy",
    )


def score_reference(cfg: Config, pairs: ray.data.Dataset) -> ray.data.Dataset:
    """Add ref_chosen_logps / ref_rejected_logps with an autoscaling actor pool of ReferenceScorer."""
    ref = cfg.reference
    blocks = max(4 * ref.max_actors, 8)  # a single block would run on one actor only
    return pairs.repartition(blocks).map_batches(
        ReferenceScorer,
        fn_constructor_kwargs={
            "name_or_path": cfg.model.name_or_path, "revision": cfg.model.revision,
            "dtype": ref.dtype, "use_gpu": ref.num_gpus_per_actor > 0,
        },
        compute=ray.data.ActorPoolStrategy(min_size=ref.min_actors, max_size=ref.max_actors),
        num_gpus=ref.num_gpus_per_actor,
        batch_size=ref.batch_size,
        batch_format="numpy",
    )


def build_trainer(cfg: Config, train_ds: ray.data.Dataset, eval_ds: ray.data.Dataset) -> TorchTrainer:
    t = cfg.train
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": cfg.to_dict()},
        scaling_config=ScalingConfig(
            num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker={"CPU": t.cpus_per_worker}
        ),
        run_config=RunConfig(
            name=f"train-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(Path(cfg.output_dir) / "ray"),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
        ),
        datasets={"train": train_ds, "eval": eval_ds},
        dataset_config=DataConfig(datasets_to_split="all"),
    )


def _check_output_dir(out: Path, overwrite: bool) -> None:
    if (out / "model").exists() and not overwrite:
        raise ConfigError(
            f"output_dir {out} already holds a finished run (model/); "
            "choose another output_dir or set overwrite_output_dir=true"
        )


def _count_rows(tokenized: ray.data.Dataset, cfg: Config) -> dict[str, int]:
    flags = tokenized.select_columns(["source", "error", "is_eval", "drop_reason"]).to_pandas()
    errors = flags[flags["error"] != ""]
    if len(errors):
        more = f" (and {len(errors) - 1} more bad rows)" if len(errors) > 1 else ""
        raise DataError(errors["error"].iloc[0] + more)
    kept = flags[flags["drop_reason"] == ""]
    counts = {
        "data/rows_read": len(flags),
        "data/dropped_prompt_too_long": int((flags["drop_reason"] == "prompt_too_long").sum()),
        "data/train_pairs": int((~kept["is_eval"]).sum()),
        "data/eval_pairs": int(kept["is_eval"].sum()),
    }
    if len(kept) == 0:
        raise DataError(f"data.path {cfg.data.path}: no usable pairs ({len(flags)} rows read, all dropped as prompt_too_long; raise data.max_length)")
    need = cfg.train.micro_batch_size * cfg.train.num_workers
    if counts["data/train_pairs"] < need:
        raise DataError(f"data.path {cfg.data.path}: {counts['data/train_pairs']} train pairs, fewer than one micro-batch per worker ({need}); add data or lower train.micro_batch_size")
    if counts["data/eval_pairs"] < cfg.train.num_workers:
        raise DataError(f"data.path {cfg.data.path}: {counts['data/eval_pairs']} eval pairs for {cfg.train.num_workers} workers; raise data.eval_fraction or add data")
    return counts


def _write_outputs(cfg: Config, out: Path, result: Any, run_stats: dict[str, float]) -> dict[str, Any]:
    """model/ (moved in last, atomically), metrics.json, metrics_history.jsonl, config.yaml."""
    out.mkdir(parents=True, exist_ok=True)
    with result.checkpoint.as_directory() as ckpt:
        history = json.loads(Path(ckpt, "history.json").read_text())
        staged = out / ".model.partial"
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(Path(ckpt, "model"), staged)
    initial = {f"initial_{k}": v for k, v in history[0].items() if k.startswith("eval/")}
    final = {k: v for k, v in result.metrics.items() if k != "step"}
    summary: dict[str, Any] = {**run_stats, **initial, **final, "model_dir": str(out / "model")}
    _atomic_write(out / "config.yaml", cfg.to_yaml())
    _atomic_write(out / "metrics_history.jsonl", "".join(json.dumps(row) + "\n" for row in history))
    _atomic_write(out / "metrics.json", json.dumps(summary, indent=2, sort_keys=True))
    previous = out / ".model.previous"
    if (out / "model").exists():
        os.replace(out / "model", previous)
    os.replace(staged, out / "model")
    shutil.rmtree(previous, ignore_errors=True)
    return summary


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
