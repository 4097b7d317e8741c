"""The data stage's Ray Data plan: read every source, normalise, tokenize (actor pool), validate,
deduplicate; the tokenized rows cached under a content key. The row logic itself is pure
(parse, tokenize, rows, report); this module only lays it out on Ray Data."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.data
from ray.data.expressions import col

from dpo_ray.config import Config
from dpo_ray.data.parse import (
    DataError,
    expand_paths,
    input_identity,
    is_saved_dataset,
    load_hf_table,
    normalize_table,
    parse_file,
    source_kind,
)
from dpo_ray.data.report import build_data_report, merge_summaries, source_order
from dpo_ray.data.rows import rows_with_prefix, summarize, valid_id_prefixes
from dpo_ray.data.tokenize import TOKENIZE_VERSION, TokenizeRows
from dpo_ray.paths import atomic_write
from dpo_ray.stats import DataStats
from dpo_ray.store import CacheStore, DataId, cache_key, model_identity, versions

CACHE_COLUMNS = ["row_id", "row_hash", "split_key", "seq_len", "prompt_ids", "chosen_ids", "rejected_ids", "mixture"]


FLAG_COLUMNS = ["row_id", "row_hash", "source", "error", "drop_reason", "drop_detail", "warning", "is_eval", "mixture"]


def prepare_pairs(cfg: Config, out: Path) -> tuple[ray.data.Dataset, DataStats, DataId]:
    """Read, normalise, tokenize and validate: the usable pairs (materialized), counts, their DataId."""
    tokenized, cache_hit, checked = tokenized_rows(cfg)
    counts, duplicates, data_id = validate_rows(tokenized, cfg, out, checked)
    keep = col("drop_reason") == ""
    if duplicates:  # is_in([]) has no element type for Arrow to compare strings with
        keep = keep & ~col("source").is_in(sorted(duplicates))
    kept = tokenized.filter(expr=keep)
    return kept.select_columns(CACHE_COLUMNS).materialize(), DataStats(counts, tokenize_cache_hit=cache_hit), data_id


def tokenized_key(cfg: Config) -> tuple[str, dict[str, Any]] | None:
    """The tokenized-rows cache key: input contents, tokenizer identity, format and length settings.
    None when the input cannot be pinned (see data.parse.input_identity)."""
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
                     "libraries": versions(("transformers", "tokenizers"))},
        "stage": "tokenized",
    }
    return cache_key(parts), parts


def tokenized_rows(cfg: Config) -> tuple[ray.data.Dataset, bool, dict[str, Any] | None]:
    """Every row read and tokenized (drops and errors included), materialized; read from the
    tokenized cache when its key matches (True = hit), else computed and committed for later runs.
    Third: the rows' check (check_rows) when the entry holds one for this data.dedup, else None."""
    keyed = tokenized_key(cfg) if cfg.data.cache_dir else None
    store = CacheStore(cfg.data.cache_dir) if keyed else None
    hit = read_cached(store, keyed[0]) if store and keyed else None
    if hit is not None:
        print(f"data: tokenized cache hit ({keyed[0]}): tokenization skipped", flush=True)
        checked = hit[1].get("checked")  # entries before issue 19 hold none
        return hit[0], True, checked if checked is not None and checked["dedup"] == cfg.data.dedup else None
    # Read to the end before the tokenizer actors start: an actor pool holding every CPU would
    # otherwise leave no CPU for the read tasks that feed it (a hang at data.tokenize_actors >= CPUs).
    rows = tokenize(cfg, read_rows(cfg).materialize()).materialize()
    checked = None
    if store and keyed:
        checked = check_rows(rows, cfg.data.dedup)  # committed with the rows: a hit skips both passes over them
        commit_cached(store, keyed[0], rows, {"parts": keyed[1], "checked": checked})
    return rows, False, checked


def read_cached(store: CacheStore, key: str, rows: int | None = None) -> tuple[ray.data.Dataset, dict[str, Any]] | None:
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


def commit_cached(store: CacheStore, key: str, ds: ray.data.Dataset, manifest: dict[str, Any]) -> None:
    """Write ``ds`` to a fresh folder of the entry, then commit the manifest that points to it and
    records each file's size and checksum (what read_cached checks)."""
    data_uri = store.new_data_uri(key)
    ds.write_parquet(data_uri)
    store.commit(key, {**manifest, "rows": ds.count(), "data_uri": data_uri, "data_dir": data_uri.rsplit("/", 1)[1],
                       "files": store.file_records(data_uri), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def read_rows(cfg: Config) -> ray.data.Dataset:
    """Any source (or every source of a mixture) -> normalised rows (prompt/chosen/rejected/kind/
    source/drop_reason/error, and ``mixture``: the index in data.sources), in Ray tasks."""
    d = cfg.data
    if not d.sources:
        return read_source(cfg, d.path, d.split, d.subset, d.revision)
    parts = [read_source(cfg, s.path, s.split, s.subset, s.revision).map_batches(
        lambda batch, i=i: {**batch, "mixture": np.full(len(batch["source"]), i, dtype=np.int64)}, batch_format="numpy")
        for i, s in enumerate(d.sources)]
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def read_source(cfg: Config, path: str, split: str, subset: str | None, revision: str | None) -> ray.data.Dataset:
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


def check_rows(tokenized: ray.data.Dataset, dedup: bool) -> dict[str, Any]:
    """The tokenized rows counted by fate ({"dedup", "duplicates", "summary"}: JSON, the tokenized
    cache entry keeps it). Counting runs in Ray tasks, one small summary per block; the driver holds
    8 bytes per valid row for duplicate detection, and the rows that share one."""
    flags = tokenized.select_columns(FLAG_COLUMNS)
    duplicates = duplicate_sources(flags) if dedup else frozenset()
    summaries = flags.map_batches(summarize, fn_kwargs={"duplicates": duplicates}, batch_format="pandas", batch_size=None)
    summary = merge_summaries(json.loads(row["summary"]) for row in summaries.take_all())
    # through JSON here too, so a run that checked and one that read the check see the same values
    return json.loads(json.dumps({"dedup": dedup, "duplicates": sorted(duplicates), "summary": summary}))


def validate_rows(tokenized: ray.data.Dataset, cfg: Config, out: Path,
                  checked: dict[str, Any] | None = None) -> tuple[dict[str, int], frozenset[str], DataId]:
    """Count rows by fate (``checked``: check_rows' result, kept with the cache entry), write
    data_report.json, stop on errors or too many drops.

    Returns the counts for metrics.json, the sources of exact duplicates to filter out, and the kept
    pairs' DataId (the reference cache's data key).
    """
    checked = checked or check_rows(tokenized, cfg.data.dedup)
    duplicates, summary = frozenset(checked["duplicates"]), checked["summary"]
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


def duplicate_sources(flags: ray.data.Dataset) -> frozenset[str]:
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
