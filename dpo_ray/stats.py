"""What the data and reference stages report: typed values, flattened once into metric names
(``metrics()``) for metrics.json, Tune and the summary."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DataStats:
    """The data stage's counts (data_report.json has the detail)."""

    counts: dict[str, int]  # metric name -> count: data/rows_read, data/dropped/<reason>, data/sources/<name>/...
    tokenize_cache_hit: bool

    @property
    def train_pairs(self) -> int:
        return self.counts["data/train_pairs"]

    @property
    def eval_pairs(self) -> int:
        return self.counts["data/eval_pairs"]

    def metrics(self) -> dict[str, float]:
        return {**self.counts, "data/tokenize_cache_hit": float(self.tokenize_cache_hit)}


@dataclass(frozen=True)
class RefStats:
    """The reference stage: skipped (a reference-free loss), read from the cache, or scored."""

    skipped: bool
    cache_hit: bool
    seconds: float
    pad_fraction: float | None = None  # padding share of the reference forwards (None when skipped)
    key: str | None = None  # the cache key (None when skipped)

    def metrics(self) -> dict[str, Any]:
        return {"ref/skipped": float(self.skipped), "ref/cache_hit": float(self.cache_hit), "ref/seconds": self.seconds,
                **({} if self.pad_fraction is None else {"ref/pad_fraction": self.pad_fraction}),
                **({} if self.key is None else {"ref/key": self.key})}


@dataclass(frozen=True)
class StageStats:
    """What the data and reference stages hand to training, with the epoch's size after mixture copies."""

    data: DataStats
    ref: RefStats
    epoch_train_pairs: int

    def metrics(self) -> dict[str, Any]:
        return {**self.data.metrics(), **self.ref.metrics(), "data/epoch_train_pairs": self.epoch_train_pairs}

    def reused(self) -> StageStats:
        """The stats of a run on datasets another run prepared (a sweep trial): it tokenized and
        scored nothing, and read the reference log-probs unless the loss needs none."""
        return StageStats(dataclasses.replace(self.data, tokenize_cache_hit=True),
                          dataclasses.replace(self.ref, cache_hit=not self.ref.skipped, seconds=0.0), self.epoch_train_pairs)


def process_start_time() -> float:
    """Unix time at which this process started (the launch, for the startup timeline)."""
    import psutil  # Ray's dependency; deferred: the pure ring imports nothing heavy

    return psutil.Process().create_time()

