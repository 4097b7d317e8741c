"""Orchestration: Ray Data plan -> reference actor pool -> TorchTrainer -> outputs.

Every resource number is set here, from the config. pipelines/dpo.py only parses and prints.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import ray
import ray.data
from ray.data.expressions import col
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from dpo_ray import faults
from dpo_ray.config import Config, resolve_paths
from dpo_ray.console import ProgressReports, progress_channel, start_ray
from dpo_ray.data.parse import (
    DataError, TokenizeRows, expand_paths, input_identity, is_saved_dataset, load_hf_table, normalize_table, parse_file, source_kind,
)
from dpo_ray.data.report import build_data_report, merge_summaries, source_order
from dpo_ray.train.objective import REF_COLUMNS
from dpo_ray.outputs import local_output
from dpo_ray.paths import atomic_write, is_remote, join
from dpo_ray.modeling import resolve_dtype
from dpo_ray.plots import plot_curves, write_tensorboard
from dpo_ray.preflight import find_checkpoint, latest_checkpoint, preflight
from dpo_ray.store import CacheStore, DataId, cache_key, model_identity, versions
from dpo_ray.reference.scorer import ReferenceScorer
from dpo_ray.train.resources import resolve_auto
from dpo_ray.data.rows import add_order_key, column_sums, mixture_copies, rows_with_prefix, summarize, valid_id_prefixes
from dpo_ray.screen import follow
from dpo_ray.train.stopping import RunInterrupted, TrainingError, interrupted_message, total_steps
from dpo_ray.data.tokenize import TOKENIZE_VERSION
from dpo_ray.tracking import LiveTracking, finish_mlflow, read_progress, start_mlflow
from dpo_ray.train.loop import train_loop_per_worker

TOKEN_COLUMNS = ["row_id", "prompt_ids", "chosen_ids", "rejected_ids", "mixture"]
# How often Ray Train's controller polls each worker; it takes one report a poll, and a worker's
# ray.train.report blocks until its previous report was taken. At Ray's default (2.0 s) a run that
# logs every 0.2 s trains at a tenth of its speed; a poll is one small actor call. An env var set by the
# user wins; Ray passes it on to the controller (ray.train.v2 ENV_VARS_TO_PROPAGATE).
POLL_ENV, POLL_SECONDS = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1"
CACHE_COLUMNS = ["row_id", "row_hash", "split_key", "seq_len", "prompt_ids", "chosen_ids", "rejected_ids", "mixture"]


def run(
    config: Config,
    *,
    run_name: str | None = None,
    callbacks: Callable[[dict[str, Any]], list[Any]] | None = None,
    prepared: Prepared | None = None,
) -> dict[str, Any]:
    """Run the whole job; returns the summary that is also written to metrics.json.

    A sweep trial passes a stable Train ``run_name``,
    ``callbacks(stage_stats)`` -> Ray Train callbacks (its report to Tune), and, when the trials
    share one data and reference stage, the ``prepared`` datasets.
    """
    cfg = resolve_paths(config)
    if prepared is None:  # a sweep trial on shared datasets: its driver checked them
        preflight(cfg)  # before Ray starts: one line for a missing model, data file, ...
    resume_path = find_checkpoint(cfg.train.resume_from) if cfg.train.resume_from else None
    with local_output(cfg.output_dir, cfg.overwrite_output_dir) as out:  # a staging folder for a URI
        return _run(cfg, out, resume_path, run_name, callbacks, prepared)


def _run(cfg: Config, out: Path, resume_path: str | None, run_name: str | None,
         callbacks: Callable[[dict[str, Any]], list[Any]] | None, prepared: Prepared | None) -> dict[str, Any]:
    started_at = time.time()
    log_dir = _start_ray()
    cfg, auto_notes = resolve_auto(cfg, [node["Resources"] for node in ray.nodes() if node["Alive"]])
    started = time.perf_counter()
    timing = {"perf/started_time": started_at, "perf/ray_start_seconds": time.time() - started_at,
              **({"auto": "; ".join(auto_notes)} if auto_notes else {})}
    timing["ray/log_dir"] = log_dir  # the summary names it: Ray's own logs stay there
    if prepared is None:
        prepared = prepare_datasets(cfg, out)
        timing["perf/prepare_seconds"] = time.perf_counter() - started  # data and reference stages
    else:  # this run scored and tokenized nothing: it reads what the shared stage prepared
        prepared = Prepared(prepared.train, prepared.eval, {
            **prepared.stats, "data/tokenize_cache_hit": 1.0, "ref/seconds": 0.0,
            "ref/cache_hit": 0.0 if prepared.stats["ref/skipped"] else 1.0,
        })
    train_pairs = prepared.stats["data/epoch_train_pairs"]
    loop_extra = {
        "total_steps": total_steps(cfg.train, train_pairs),
        "steps_per_epoch": train_pairs // cfg.train.batch_size,
        "resume_path": resume_path,
        "faults": faults.from_env(),  # the test switch; {} in a user's run
    }
    mlflow_run = start_mlflow(cfg, run_name or cfg.output_dir.rstrip("/").rsplit("/", 1)[-1])
    live = LiveTracking(str(out), "tensorboard" in cfg.train.report_to, mlflow_run)
    progress = ProgressReports(progress_channel(out), loop_extra["total_steps"], cfg.train.batch_size)
    trainer = build_trainer(cfg, prepared.train, prepared.eval, loop_extra, run_name=run_name,
                            callbacks=[live, progress, *(callbacks(prepared.stats) if callbacks else [])])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "config.yaml", cfg.to_yaml())  # now, so that an interrupted run can resume from it
    try:
        with follow(progress.channel, sys.stderr, live=sys.stderr.isatty()):  # the driver prints the progress
            result = _fit(trainer, cfg, out, loop_extra["total_steps"])
        run_stats = {**prepared.stats, **timing, "perf/total_seconds": time.perf_counter() - started,
                     **({"mlflow_run_id": mlflow_run.run_id} if mlflow_run else {})}
        summary = _write_outputs(cfg, out, result, run_stats)
    except BaseException:
        finish_mlflow(mlflow_run, None, failed=True)
        raise
    finish_mlflow(mlflow_run, summary, failed=False)
    return summary


def _fit(trainer: TorchTrainer, cfg: Config, out: Path, total: int) -> Any:
    """trainer.fit(), with Ctrl+C turned into RunInterrupted (one line: the step reached, how to
    resume). Ray Train's SIGINT handler aborts the worker group and ends fit() with SystemExit; a
    KeyboardInterrupt comes where that handler is not installed yet."""
    try:
        return trainer.fit()
    except (KeyboardInterrupt, SystemExit) as err:
        local = not is_remote(cfg.output_dir)  # train.resume_from takes a local or mounted path
        has_checkpoint = local and latest_checkpoint(out) is not None
        raise RunInterrupted(interrupted_message(read_progress(out), total, cfg.output_dir, has_checkpoint)) from err


@dataclass(frozen=True)
class Prepared:
    """What the data and reference stages hand to training: materialized datasets and their stats."""

    train: ray.data.Dataset
    eval: ray.data.Dataset
    stats: dict[str, Any]


def prepare_datasets(cfg: Config, out: Path | None = None) -> Prepared:
    """Data stage, reference stage (cached), train/eval split, the seeded train order. ``cfg`` is
    resolved; data_report.json goes to ``out`` (default: output_dir, a local path)."""
    kept, counts, data_id = prepare_pairs(cfg, out or Path(cfg.output_dir))
    if cfg.loss.reference_free():
        scored, ref_stats = kept, {"ref/skipped": 1.0, "ref/cache_hit": 0.0, "ref/seconds": 0.0}
    else:
        scored, ref_stats = reference_stage(cfg, kept, data_id)
    columns = TOKEN_COLUMNS + ([] if cfg.loss.reference_free() else list(REF_COLUMNS))
    eval_fraction = cfg.data.eval_fraction
    train_ds = scored.filter(expr=col("split_key") >= eval_fraction).select_columns(columns)
    if cfg.data.sources:
        train_ds = train_ds.map_batches(
            mixture_copies, fn_kwargs={"rates": mixture_rates(cfg, counts), "seed": cfg.train.seed}, batch_format="numpy")
    train_ds = deterministic_shuffle(train_ds, cfg.train.seed, drop=("copy",) if cfg.data.sources else ()).materialize()
    eval_ds = scored.filter(expr=col("split_key") < eval_fraction).select_columns(columns).materialize()
    epoch_pairs = train_ds.count() if cfg.data.sources else counts["data/train_pairs"]
    return Prepared(train_ds, eval_ds, {**counts, **ref_stats, "data/epoch_train_pairs": epoch_pairs})


def mixture_rates(cfg: Config, counts: dict[str, Any]) -> list[float]:
    """Copies per pair and epoch for each source: an epoch has as many pairs as all train sources
    together, source s fills weight_s / sum(weights) of it."""
    train = [s for s in cfg.data.sources if not s.eval]
    total_pairs = sum(counts[f"data/sources/{s.name}/train_pairs"] for s in train)
    total_weight = sum(s.weight for s in train)
    rates = []
    for s in cfg.data.sources:
        pairs = counts[f"data/sources/{s.name}/train_pairs"]
        if not s.eval and pairs == 0:
            raise DataError(f"data.sources {s.name} ({s.path}): no usable train pairs; see data_report.json")
        rates.append(0.0 if s.eval else total_pairs * s.weight / total_weight / pairs)
    return rates


def precompute_reference(config: Config) -> dict[str, Any]:
    """The data and reference stages alone: warm the cache (before a sweep, say). Returns stats."""
    cfg = resolve_paths(config)
    preflight(cfg, writes_model=False)
    _start_ray()
    with local_output(cfg.output_dir, overwrite=True) as out:  # only data_report.json goes there
        kept, counts, data_id = prepare_pairs(cfg, out)
        _, ref_stats = reference_stage(cfg, kept, data_id)
    return {**counts, **ref_stats, "cache_dir": cfg.reference.cache_dir or ""}


def _start_ray() -> str:
    """Ray with dpo_ray's console settings (console.start_ray); returns Ray's session log folder."""
    return start_ray()


def prepare_pairs(cfg: Config, out: Path) -> tuple[ray.data.Dataset, dict[str, int], DataId]:
    """Read, normalise, tokenize and validate: the usable pairs (materialized), counts, their DataId."""
    tokenized, cache_hit = tokenized_rows(cfg)
    counts, duplicates, data_id = _validate_rows(tokenized, cfg, out)
    counts["data/tokenize_cache_hit"] = cache_hit
    keep = col("drop_reason") == ""
    if duplicates:  # is_in([]) has no element type for Arrow to compare strings with
        keep = keep & ~col("source").is_in(sorted(duplicates))
    kept = tokenized.filter(expr=keep)
    return kept.select_columns(CACHE_COLUMNS).materialize(), counts, data_id


def tokenized_key(cfg: Config) -> tuple[str, dict[str, Any]] | None:
    """The tokenized-rows cache key: input contents, tokenizer identity, format and length settings.
    None when the input cannot be pinned (see data.input_identity)."""
    d = cfg.data
    if d.sources:
        inputs: Any = [input_identity(s.path, split=s.split, subset=s.subset, revision=s.revision) for s in d.sources]
        if None in inputs:
            return None
        inputs = [{**ident, "eval": s.eval} for ident, s in zip(inputs, d.sources)]
    else:
        inputs = input_identity(d.path, split=d.split, subset=d.subset, revision=d.revision)
    if inputs is None:
        return None
    parts = {
        "inputs": inputs, "tokenizer": model_identity(cfg.model.name_or_path, cfg.model.revision)["tokenizer"],
        "format": d.format, "columns": d.column_map(), "eval_fraction": d.eval_fraction,
        "lengths": {"max_length": d.max_length, "max_prompt_length": d.max_prompt_length, "truncation_mode": d.truncation_mode},
        # the ids also depend on the tokenizer libraries (transformers 5 reads tokenizer files differently from 4)
        "tokenize": {"version": TOKENIZE_VERSION, "jointly": d.tokenize_jointly,
                     "libraries": {p: version(p) for p in ("transformers", "tokenizers")}},
        "stage": "tokenized",
    }
    return cache_key(parts), parts


def tokenized_rows(cfg: Config) -> tuple[ray.data.Dataset, float]:
    """Every row read and tokenized (drops and errors included), materialized; read from the
    tokenized cache when its key matches (1.0 = hit), else computed and committed for later runs."""
    keyed = tokenized_key(cfg) if cfg.data.cache_dir else None
    store = CacheStore(cfg.data.cache_dir) if keyed else None
    hit = _read_cached(store, keyed[0]) if store and keyed else None
    if hit is not None:
        print(f"data: tokenized cache hit ({keyed[0]}): tokenization skipped", flush=True)
        return hit[0], 1.0
    # Read to the end before the tokenizer actors start: an actor pool holding every CPU would
    # otherwise leave no CPU for the read tasks that feed it (a hang at data.tokenize_actors >= CPUs).
    rows = tokenize(cfg, read_rows(cfg).materialize()).materialize()
    if store and keyed:
        _commit_cached(store, keyed[0], rows, {"parts": keyed[1]})
    return rows, 0.0


def _read_cached(store: CacheStore, key: str, rows: int | None = None) -> tuple[ray.data.Dataset, dict[str, Any]] | None:
    """A committed cache entry read whole, with its manifest; None when there is none, when its row
    count is not ``rows``, or when it is damaged: a file recorded in the manifest is missing, has
    another size or checksum, does not read, or the rows read are not the manifest's. A damaged
    entry prints one warning line; the caller computes the rows again and commits a fresh entry."""
    manifest = store.read_manifest(key)
    if manifest is None or (rows is not None and manifest["rows"] != rows):
        return None
    problem = store.check(key, manifest)
    if problem is None:
        try:
            ds = ray.data.read_parquet(store.data_files(key, manifest)).materialize()
        except (pa.ArrowException, OSError, ray.exceptions.RayTaskError) as err:  # RayTaskError: raised in a read task
            problem = f"is damaged (it does not read: {str(err).strip().splitlines()[-1][:200]})"
        else:
            if ds.count() == manifest["rows"]:
                return ds, manifest
            problem = f"is damaged ({ds.count()} rows read, the manifest says {manifest['rows']})"
    print(f"cache: entry {key} at {store.entry_uri(key)} {problem}; recomputing", file=sys.stderr, flush=True)
    return None


def _commit_cached(store: CacheStore, key: str, ds: ray.data.Dataset, manifest: dict[str, Any]) -> None:
    """Write ``ds`` to a fresh folder of the entry, then commit the manifest that points to it and
    records each file's size and checksum (what _read_cached checks)."""
    data_uri = store.new_data_uri(key)
    ds.write_parquet(data_uri)
    store.commit(key, {**manifest, "rows": ds.count(), "data_uri": data_uri, "data_dir": data_uri.rsplit("/", 1)[1],
                       "files": store.file_records(data_uri), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def read_rows(cfg: Config) -> ray.data.Dataset:
    """Any source (or every source of a mixture) -> normalised rows (prompt/chosen/rejected/kind/
    source/drop_reason/error, and ``mixture``: the index in data.sources), in Ray tasks."""
    d = cfg.data
    if not d.sources:
        return _read_source(cfg, d.path, d.split, d.subset, d.revision)
    parts = [_read_source(cfg, s.path, s.split, s.subset, s.revision).map_batches(
        lambda batch, i=i: {**batch, "mixture": np.full(len(batch["source"]), i, dtype=np.int64)}, batch_format="numpy")
        for i, s in enumerate(d.sources)]
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def _read_source(cfg: Config, path: str, split: str, subset: str | None, revision: str | None) -> ray.data.Dataset:
    kwargs = {"fmt": cfg.data.format, "columns": cfg.data.column_map()}
    if source_kind(path) != "files":
        table = load_hf_table(path, split=split, subset=subset, revision=revision)
        table = table.append_column("__row", pa.array(range(table.num_rows), type=pa.int64()))
        name = path if is_saved_dataset(path) else f"{path}[{split}]"
        return ray.data.from_arrow(table).map_batches(
            lambda batch: normalize_table(batch, name, **kwargs), batch_format="pyarrow"
        )
    raw = ray.data.read_binary_files(expand_paths(path), include_paths=True)
    return raw.flat_map(lambda rec: parse_file(rec["path"], rec["bytes"], **kwargs))


def tokenize(cfg: Config, rows: ray.data.Dataset) -> ray.data.Dataset:
    """Normalised rows -> token ids, row ids, split flags, drop reasons (tokenizer actors)."""
    d = cfg.data
    return rows.map_batches(
        TokenizeRows,
        fn_constructor_kwargs={
            "name_or_path": cfg.model.name_or_path, "revision": cfg.model.revision, "max_length": d.max_length,
            "trust_remote_code": cfg.model.trust_remote_code,
            "eval_sources": tuple(i for i, s in enumerate(d.sources) if s.eval),
            "max_prompt_length": d.max_prompt_length, "truncation_mode": d.truncation_mode,
            "eval_fraction": d.eval_fraction, "tokenize_jointly": d.tokenize_jointly,
        },
        compute=ray.data.ActorPoolStrategy(size=d.tokenize_actors),
        batch_size=d.tokenize_batch_size,
        batch_format="numpy",
    )


def reference_key(cfg: Config, data_id: DataId) -> tuple[str, dict[str, Any]]:
    """The cache key: model and tokenizer identity, tokenized data, dtype, length settings."""
    ref, d = cfg.reference, cfg.data
    parts = {
        "model": model_identity(cfg.model.name_or_path, cfg.model.revision),
        "data": data_id.key(),
        "rows": data_id.rows,
        "dtype": str(resolve_dtype(ref.dtype, on_gpu=ref.num_gpus_per_actor > 0)).removeprefix("torch."),
        "lengths": {"max_length": d.max_length, "max_prompt_length": d.max_prompt_length, "truncation_mode": d.truncation_mode},
        "tokenize": {"version": TOKENIZE_VERSION, "jointly": d.tokenize_jointly},
    }
    return cache_key(parts), parts


def reference_stage(cfg: Config, pairs: ray.data.Dataset, data_id: DataId) -> tuple[ray.data.Dataset, dict[str, float]]:
    """Cached reference log-probs for ``pairs``: a committed cache entry is read as is (no model is
    loaded); otherwise the actor pool scores the pairs and the result is committed for later runs."""
    start = time.perf_counter()
    key, parts = reference_key(cfg, data_id)
    store = CacheStore(cfg.reference.cache_dir) if cfg.reference.cache_dir else None
    hit = _read_cached(store, key, rows=data_id.rows) if store else None
    if hit is not None:
        print(f"reference: cache hit ({key})", flush=True)
        return hit[0], {"ref/cache_hit": 1.0, "ref/skipped": 0.0, "ref/seconds": time.perf_counter() - start,
                        "ref/pad_fraction": hit[1]["pad_fraction"], "ref/key": key}
    scored = score_reference(cfg, pairs).materialize()
    columns = ("ref_pad_tokens", "ref_tokens")
    sums = scored.map_batches(column_sums, fn_kwargs={"columns": columns}, batch_size=None, batch_format="numpy").take_all()
    pads, real = (sum(int(row[c]) for row in sums) for c in columns)
    pad_fraction = pads / (pads + real) if pads + real else 0.0
    if store is not None:
        _commit_cached(store, key, scored, {"parts": parts, "versions": versions(), "pad_fraction": pad_fraction})
    print(f"reference: scored {data_id.rows} pairs ({key}), pad fraction {pad_fraction:.3f}", flush=True)
    return scored, {"ref/cache_hit": 0.0, "ref/skipped": 0.0, "ref/seconds": time.perf_counter() - start,
                    "ref/pad_fraction": pad_fraction, "ref/key": key}


def score_reference(cfg: Config, pairs: ray.data.Dataset) -> ray.data.Dataset:
    """Add the reference columns with an autoscaling actor pool of ReferenceScorer.

    Length bucketing happens inside each call: its 2 x reference.batch_size rows are sorted by length
    and scored reference.rows_per_forward at a time. No global sort: it was a barrier before the
    first forward (a shuffle of every token id) and cost more than the padding it saved.
    """
    ref = cfg.reference
    blocks = max(4 * ref.max_actors, 8)  # a single block would run on one actor only
    return pairs.repartition(blocks).map_batches(
        ReferenceScorer,
        fn_constructor_kwargs={
            "name_or_path": cfg.model.name_or_path, "revision": cfg.model.revision,
            "dtype": ref.dtype, "use_gpu": ref.num_gpus_per_actor > 0, "trust_remote_code": cfg.model.trust_remote_code,
            "rows_per_forward": ref.rows_per_forward, "length_bucketing": ref.length_bucketing,
            "faults": faults.from_env(),  # the test switch (dpo_ray.faults); {} in a user's run
        },
        compute=ray.data.ActorPoolStrategy(min_size=ref.min_actors, max_size=ref.max_actors),
        num_gpus=ref.num_gpus_per_actor,
        batch_size=ref.batch_size,
        batch_format="numpy",
    )


def deterministic_shuffle(ds: ray.data.Dataset, seed: int, drop: tuple[str, ...] = ()) -> ray.data.Dataset:
    """Shuffle by sorting on a seeded hash of each row id: the same order in every run, whatever
    the block layout upstream (Ray's random_shuffle depends on it), so restarts replay exactly.

    The sort uses Ray's task-based pull shuffle: 0.4-0.6 s for 2,700 quickstart pairs where Ray
    2.60's default (SHUFFLE_V2, hash-shuffle actors) took 3.7-5.1 s and slowed the next dataset by
    1 s (measured on the 2-core machine); a preference set's few thousand to a million rows are
    well within the task-based sort's range."""
    keyed = ds.map_batches(add_order_key, fn_kwargs={"seed": seed}, batch_format="numpy")
    # Not the process's DataContext: the copy a dataset chain takes when it is read, shared by every
    # dataset derived from it, so this chain's shuffles (this sort is its only one) use the pull shuffle.
    keyed.context.shuffle_strategy = ray.data.context.ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    return keyed.sort("_order").drop_columns(["_order", *drop])


def build_trainer(cfg: Config, train_ds: ray.data.Dataset, eval_ds: ray.data.Dataset, loop_extra: dict[str, Any],
                  *, run_name: str | None = None, callbacks: list[Any] | None = None) -> TorchTrainer:
    """One TorchTrainer. Both datasets go whole to every worker, which takes its strided share of
    each global batch (train_loop.micro_batches, _evaluate): the same pairs in the same order in
    every run and for any worker count, so restarts replay exactly and no eval pair is dropped."""
    t = cfg.train
    os.environ.setdefault(POLL_ENV, POLL_SECONDS)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": cfg.to_dict(), **loop_extra},
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
        datasets={"train": train_ds, "eval": eval_ds},
        dataset_config=DataConfig(datasets_to_split=[]),
    )


FLAG_COLUMNS = ["row_id", "row_hash", "source", "error", "drop_reason", "drop_detail", "warning", "is_eval", "mixture"]


def _validate_rows(tokenized: ray.data.Dataset, cfg: Config, out: Path) -> tuple[dict[str, int], frozenset[str], DataId]:
    """Count rows by fate, write data_report.json, stop on errors or too many drops.

    Returns the counts for metrics.json, the sources of exact duplicates to filter out, and the kept
    pairs' DataId (the reference cache's data key). Counting runs in Ray tasks, one small summary per
    block; the driver holds 8 bytes per valid row for duplicate detection, and the rows that share one.
    """
    flags = tokenized.select_columns(FLAG_COLUMNS)
    duplicates = _duplicate_sources(flags) if cfg.data.dedup else frozenset()
    summaries = flags.map_batches(summarize, fn_kwargs={"duplicates": duplicates}, batch_format="pandas", batch_size=None)
    summary = merge_summaries(json.loads(row["summary"]) for row in summaries.take_all())
    if summary["error_rows"]:
        more = f" (and {summary['error_rows'] - 1} more files with errors)" if summary["error_rows"] > 1 else ""
        raise DataError(summary["errors"][0][1] + more)
    report = build_data_report(summary, cfg.data.max_drop_fraction)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "data_report.json", json.dumps(report, indent=2))
    if report["kept"] == 0 or report["drop_fraction"] > cfg.data.max_drop_fraction:
        reasons = ", ".join(f"{r} {n} (e.g. {report['details'][r][0]})" for r, n in report["dropped"].items())
        raise DataError(
            f"{report['rows_dropped']} of {report['rows_read']} rows dropped ({report['drop_fraction']:.1%} > "
            f"data.max_drop_fraction={cfg.data.max_drop_fraction}): {reasons}; fix those rows, or raise "
            f"data.max_drop_fraction to train on the rest; see {out / 'data_report.json'}"
        )
    counts = {
        "data/rows_read": report["rows_read"], "data/rows_dropped": report["rows_dropped"],
        "data/train_pairs": report["train_pairs"], "data/eval_pairs": report["eval_pairs"],
        "data/duplicates_removed": report["duplicates_removed"],
        **{f"data/dropped/{r}": n for r, n in report["dropped"].items()},
        **{f"data/warnings/{w}": n for w, n in report["warnings"].items()},
    }
    for i, source in enumerate(cfg.data.sources):
        train, held_out = summary["mixture"].get(str(i), [0, 0])
        counts[f"data/sources/{source.name}/train_pairs"] = train
        counts[f"data/sources/{source.name}/eval_pairs"] = held_out
    if counts["data/train_pairs"] < cfg.train.batch_size:
        removed = report["duplicates_removed"]
        dedup = f" after removing {removed} duplicate pairs (data.dedup=false keeps them)" if removed else ""
        raise DataError(f"data.path {cfg.data.path}: {counts['data/train_pairs']} train pairs{dedup}, fewer than one batch "
                        f"(train.batch_size={cfg.train.batch_size}); add data or lower train.batch_size")
    if counts["data/eval_pairs"] < cfg.train.num_workers:
        raise DataError(f"data.path {cfg.data.path}: {counts['data/eval_pairs']} eval pairs for {cfg.train.num_workers} workers; raise data.eval_fraction or add data")
    return counts, duplicates, DataId(report["kept"], summary["hash_sum"])


def _duplicate_sources(flags: ray.data.Dataset) -> frozenset[str]:
    """Sources of the valid rows whose pair (row id) an earlier source (in source order) already has.
    The driver gets a 64-bit prefix of each valid row id (8 bytes a row), then only the rows whose
    prefix occurs twice, and compares their full ids."""
    blocks = flags.select_columns(["row_id", "drop_reason", "error"]).map_batches(valid_id_prefixes, batch_format="numpy", batch_size=None)
    prefixes = [b["prefix"] for b in blocks.iter_batches(batch_format="numpy", batch_size=None)]
    values, seen = np.unique(np.concatenate(prefixes) if prefixes else np.zeros(0, np.uint64), return_counts=True)
    shared = {int(v) for v in values[seen > 1]}
    if not shared:
        return frozenset()
    rows = flags.map_batches(rows_with_prefix, fn_kwargs={"shared": shared}, batch_format="numpy")
    by_id: dict[str, list[str]] = {}
    for row in rows.take_all():
        by_id.setdefault(row["row_id"], []).append(row["source"])
    return frozenset(s for sources in by_id.values() for s in sorted(sources, key=source_order)[1:])


def _write_outputs(cfg: Config, out: Path, result: Any, run_stats: dict[str, Any]) -> dict[str, Any]:
    """model/ (moved in last, atomically), metrics.json, metrics_history.jsonl (config.yaml is written before training)."""
    out.mkdir(parents=True, exist_ok=True)
    with result.checkpoint.as_directory() as ckpt:
        history = json.loads(Path(ckpt, "history.json").read_text())
        atomic_write(out / "metrics_history.jsonl", "".join(json.dumps(row) + "\n" for row in history))
        if result.metrics.get("stop_reason") == "non_finite":
            raise TrainingError(
                f"training stopped at step {result.metrics['train/steps']:.0f}: the loss or gradient norm is not finite "
                f"(lower train.learning_rate, or set train.nonfinite=skip); no model was written, history in {out / 'metrics_history.jsonl'}"
            )
        staged = out / ".model.partial"
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(Path(ckpt, "model"), staged)
    initial = {f"initial_{k}": v for k, v in history[0].items() if k.startswith("eval/")}
    final = {k: v for k, v in result.metrics.items() if k != "step"}
    summary: dict[str, Any] = {**run_stats, **initial, **final, "model_dir": join(cfg.output_dir, "model")}
    if "perf/first_step_time" in final:  # step 1 ran in this job (not before a resume)
        summary["perf/job_seconds_to_first_step"] = final["perf/first_step_time"] - run_stats["perf/started_time"]
    plot_curves(history, out / "curves.png")
    shutil.rmtree(out / "tensorboard", ignore_errors=True)  # the live events; rewritten whole, each step once
    if "tensorboard" in cfg.train.report_to:
        write_tensorboard(history, out / "tensorboard")
    atomic_write(out / "metrics.json", json.dumps(summary, indent=2, sort_keys=True))
    previous = out / ".model.previous"
    if (out / "model").exists():
        os.replace(out / "model", previous)
    os.replace(staged, out / "model")
    shutil.rmtree(previous, ignore_errors=True)
    return summary

