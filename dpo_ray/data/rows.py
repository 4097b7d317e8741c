"""What Ray Data runs on blocks of rows in the data stage: validation summaries, duplicate prefixes,
mixture copies, the seeded order.

Pure ring, and light on purpose: a Ray worker unpickles these functions by importing this module
(numpy, pandas, hashlib) instead of dpo_ray.run, whose imports (torch, transformers, Ray Train)
cost a fresh worker process about 6 s of CPU (measured: 84 s quickstart-size run, 25.7 s data stage).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from dpo_ray.data.report import summarize_block


def seeded_hash(seed: str, key: str) -> int:
    """A 64-bit number from SHA-256 of seed + key: the same in every process, run and block layout."""
    return int.from_bytes(hashlib.sha256((seed + key).encode()).digest()[:8], "big")


def summarize(flags: Any, duplicates: frozenset[str]) -> Any:
    """One block of flags -> one row holding its summary (data_report.summarize_block) as JSON."""
    import pandas as pd

    return pd.DataFrame({"summary": [json.dumps(summarize_block(flags, duplicates))]})


def column_sums(batch: dict[str, np.ndarray], columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    """One block -> one row: the sum of each of ``columns`` (the driver adds the rows up; Ray's
    Dataset.sum is a hash shuffle, 3 s for a few thousand rows)."""
    return {c: np.array([int(np.sum(batch[c]))], dtype=np.int64) for c in columns}


def id_prefix(row_id: str) -> int:
    return int(row_id[:16], 16)


def valid_id_prefixes(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    valid = (batch["drop_reason"] == "") & (batch["error"] == "")
    return {"prefix": np.array([id_prefix(r) for r in batch["row_id"][valid]], dtype=np.uint64)}


def rows_with_prefix(batch: dict[str, np.ndarray], shared: set[int]) -> dict[str, np.ndarray]:
    """The valid rows whose id prefix is one of ``shared`` (candidate duplicates): row_id and source.
    A batch function, not Dataset.filter(fn), which Ray warns about (it prefers expressions; a hash
    prefix is none)."""
    valid = (batch["drop_reason"] == "") & (batch["error"] == "")
    keep = valid & np.array([id_prefix(r) in shared for r in batch["row_id"]], dtype=bool)
    return {"row_id": batch["row_id"][keep], "source": batch["source"][keep]}


def mixture_copies(batch: dict[str, np.ndarray], rates: list[float], seed: int) -> dict[str, np.ndarray]:
    """Repeat each pair floor(rate) times, plus once for the pairs whose seeded hash falls below
    frac(rate): deterministic, and no pair repeats before every pair of its source has appeared."""
    copies = []
    for rid, mix in zip(batch["row_id"], batch["mixture"]):
        rate = rates[int(mix)]
        u = seeded_hash(f"mix{seed}", str(rid)) / 2.0**64
        copies.append(int(rate) + (u < rate - int(rate)))
    copies = np.asarray(copies, dtype=np.int64)
    out = {k: np.repeat(v, copies, axis=0) for k, v in batch.items()}
    out["copy"] = np.concatenate([np.arange(c) for c in copies]) if len(copies) else np.zeros(0, dtype=np.int64)
    return out


def add_order_key(batch: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """An _order column: a seeded hash of each row id (of each copy of a repeated pair)."""
    ids = [str(rid) for rid in batch["row_id"]]
    if "copy" in batch:  # a repeated pair (mixture): each copy its own place
        ids = [f"{rid}#{c}" for rid, c in zip(ids, batch["copy"])]
    keys = [seeded_hash(str(seed), rid) >> 1 for rid in ids]  # >> 1: fits an int64 sort column
    return {**batch, "_order": np.asarray(keys, dtype=np.int64)}
