"""What Ray Data runs on blocks of rows in the data stage: validation summaries, duplicate prefixes,
column sums (mixture copies and the seeded order are dpo_ray.train.order's).

Pure ring, and light on purpose: a Ray worker unpickles these functions by importing this module
(numpy, pandas) instead of a stage module, whose imports (torch, transformers, Ray Train) cost a
fresh worker process seconds of CPU (bench/PROFILE.md).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from dpo_ray.data.report import summarize_block


def summarize(flags: Any, duplicates: frozenset[str]) -> Any:
    """One block of flags -> one row holding its summary (data.report.summarize_block) as JSON."""
    import pandas as pd

    return pd.DataFrame({"summary": [json.dumps(summarize_block(flags, duplicates))]})


def column_sums(batch: dict[str, np.ndarray], columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    """One block -> one row: the sum of each of ``columns`` (the driver adds the rows up; Ray's
    Dataset.sum is a hash shuffle, far slower at this size: bench/PROFILE.md)."""
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
