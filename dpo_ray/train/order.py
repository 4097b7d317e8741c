"""The replay contract: which pairs each worker sees at each step, the same in every run.

1. Mixture copies (data.sources): each epoch holds pair p of source s ``rate_s`` times
   (``mixture_rates``: source s fills weight_s / sum(weights) of an epoch as large as all train
   sources together); a fractional rate is floor(rate) copies plus one for the pairs whose seeded
   hash falls below frac(rate) (``mixture_copies``). The copies are made once; every epoch reads them.
2. The seeded order: ``add_order_key`` gives each row (each copy) a seeded hash of its row id, and
   the train set is sorted on it (Ray's sort, in the Ray stage): the same order whatever the block
   layout upstream.
3. Lanes: an epoch is ``steps_per_epoch`` (S) global batches of G = batch_size / micro_batch_size
   micro-batches, so it uses the first G S m rows of the ordered set (m = micro_batch_size; the
   rest, fewer than batch_size rows, is left out of every epoch). Lane c (c < G) is the contiguous
   slice of rows [c S m, (c + 1) S m) (``lane_starts``); global batch s is micro-batch s of every
   lane. G, S and m do not depend on the worker count W, so neither do the global batches.
4. Each epoch each lane reorders its own S micro-batches (``lane_stream``, seeded by seed, epoch and
   lane): with train.group_by_length, each window of length_group_window micro-batches' pairs is
   sorted by padded width, cut and the cuts permuted (``length_grouped``, epoch 0 too); without
   it, from epoch 1 on, micro-batches are permuted within windows of WINDOW (``window_shuffle``).
5. The per-worker share: rank r owns lanes [r A, (r + 1) A) (A accumulation steps, A W = G;
   ``rank_lanes``) and reads only those (each a Ray dataset of its own, train/trainer.py): 1/W of
   the epoch's rows. Its A micro-batches of step s are micro-batch s of each of its lanes
   (``micro_batches``).
6. The eval shard (``EvalShard``): rank r reads only the contiguous run of ceil(M / W) eval
   micro-batches ``eval_starts`` gives it (M micro-batches in all, the last may be partial); every
   eval pair is on exactly one rank, none dropped.
7. A resume at step k (train.resume_from, a restarted worker group) rebuilds each lane's stream of
   k's epoch and skips its first k - epoch S micro-batches: the batches an uninterrupted run takes
   from step k on.

Pure ring and light on purpose: a Ray Data worker unpickles mixture_copies and add_order_key by
importing this module (numpy; DataError's module, pyarrow) instead of the Ray or torch modules.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import Any, Protocol, TypeVar

import numpy as np

from dpo_ray.config import Config
from dpo_ray.data.parse import DataError

TOKEN_FIELDS = ("prompt_ids", "chosen_ids", "rejected_ids")
WINDOW = 32
"""Micro-batches per window of the epoch shuffle (train.group_by_length off)."""

Batch = dict[str, np.ndarray]
T = TypeVar("T")


class BatchSource(Protocol):
    """What the order reads: a Ray DataIterator (ray.train.get_dataset_shard) or a test's fake."""

    def iter_batches(self, *, batch_size: int, batch_format: str, drop_last: bool = False) -> Iterable[Batch]: ...


def seeded_hash(seed: str, key: str) -> int:
    """A 64-bit number from SHA-256 of seed + key: the same in every process, run and block layout."""
    return int.from_bytes(hashlib.sha256((seed + key).encode()).digest()[:8], "big")


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


def mixture_copies(batch: Batch, rates: list[float], seed: int) -> Batch:
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


def add_order_key(batch: Batch, seed: int) -> Batch:
    """An _order column: a seeded hash of each row id (of each copy of a repeated pair)."""
    ids = [str(rid) for rid in batch["row_id"]]
    if "copy" in batch:  # a repeated pair (mixture): each copy its own place
        ids = [f"{rid}#{c}" for rid, c in zip(ids, batch["copy"])]
    keys = [seeded_hash(str(seed), rid) >> 1 for rid in ids]  # >> 1: fits an int64 sort column
    return {**batch, "_order": np.asarray(keys, dtype=np.int64)}


def lane_starts(cfg: Config, steps_per_epoch: int) -> list[int]:
    """Row indices of the ordered train set where lanes 1 .. G begin (point 3): np.split-style cut
    points; the piece after the last one is the left-out tail."""
    lane_rows = steps_per_epoch * cfg.train.micro_batch_size
    return [c * lane_rows for c in range(1, cfg.train.batch_size // cfg.train.micro_batch_size + 1)]


def rank_lanes(cfg: Config, rank: int, world: int) -> range:
    """The lanes rank r owns (point 5)."""
    accum = cfg.train.batch_size // (cfg.train.micro_batch_size * world)
    return range(rank * accum, (rank + 1) * accum)


def micro_batches(lanes: Sequence[BatchSource], lane_ids: Sequence[int], cfg: Config, steps_per_epoch: int,
                  start_step: int) -> Iterator[Batch]:
    """Endless micro-batches for the rank owning ``lanes`` (their ids ``lane_ids``) from global step
    ``start_step`` on: per step, micro-batch s of each lane in turn (points 4, 5 and 7)."""
    step = start_step
    while True:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        streams = [islice(lane_stream(source, cfg, epoch, lane), in_epoch, steps_per_epoch)
                   for source, lane in zip(lanes, lane_ids)]
        for group in zip(*streams):
            yield from group
        step = (epoch + 1) * steps_per_epoch


def lane_stream(lane: BatchSource, cfg: Config, epoch: int, lane_id: int) -> Iterator[Batch]:
    """One lane's micro-batches in one epoch, in order: the same for any worker count (point 4)."""
    micro = cfg.train.micro_batch_size
    rng = np.random.default_rng([cfg.train.seed, epoch, lane_id])
    if cfg.train.group_by_length:
        return length_grouped(lane, micro, cfg.train.length_group_window, rng)
    batches = iter(lane.iter_batches(batch_size=micro, batch_format="numpy", drop_last=True))
    return window_shuffle(batches, rng, window=WINDOW) if epoch > 0 else batches


def length_grouped(dataset: BatchSource, micro: int, window: int, rng: np.random.Generator) -> Iterator[Batch]:
    """Micro-batches of similar length: each window of ``window`` micro-batches' pairs (in the
    seeded train order) is sorted by padded width and cut into micro-batches, which are then
    permuted (seeded). A partial micro-batch at the end of the epoch is dropped."""
    for block in dataset.iter_batches(batch_size=micro * window, batch_format="numpy"):
        n = len(block["row_id"]) // micro * micro
        widths = [len(p) + max(len(c), len(r)) for p, c, r in zip(block["prompt_ids"][:n], block["chosen_ids"][:n], block["rejected_ids"][:n])]
        order = np.argsort(np.asarray(widths), kind="stable")
        cuts = [order[i:i + micro] for i in range(0, n, micro)]
        for j in rng.permutation(len(cuts)):
            yield {k: v[cuts[j]] for k, v in block.items()}


def window_shuffle(batches: Iterable[T], rng: np.random.Generator, window: int) -> Iterator[T]:
    """Permute consecutive windows of micro-batches (deterministic for a given rng seed)."""
    buffer: list[T] = []
    for batch in batches:
        buffer.append(batch)
        if len(buffer) == window:
            yield from (buffer[i] for i in rng.permutation(window))
            buffer = []
    yield from (buffer[i] for i in rng.permutation(len(buffer)))


def eval_starts(eval_pairs: int, micro_batch_size: int, world: int) -> list[int]:
    """Row indices of the eval set where ranks 1 .. W-1's shares begin (point 6)."""
    per_rank = eval_rounds(eval_pairs, micro_batch_size, world) * micro_batch_size
    return [min(r * per_rank, eval_pairs) for r in range(1, world)]


def eval_rounds(eval_pairs: int, micro_batch_size: int, world: int) -> int:
    """Forwards every rank runs per eval: ceil(M / W) of the M eval micro-batches."""
    micro_batches = -(-eval_pairs // micro_batch_size)
    return -(-micro_batches // world)


class EvalShard:
    """This rank's eval micro-batches (its own share, point 6), read at the first eval and kept for
    the later ones: each read would re-run the Ray Data pipeline. A rank with fewer than ``rounds``
    micro-batches runs the rest on a filler batch (the first of rank 0's share) it does not count,
    so every rank runs as many forwards and ZeRO-3's gathers match across ranks."""

    def __init__(self, own: BatchSource, filler: BatchSource, micro_batch_size: int, rounds: int) -> None:
        self._own, self._filler, self._micro, self._rounds = own, filler, micro_batch_size, rounds
        self._read: tuple[list[Batch], Batch | None] | None = None

    def batches(self) -> tuple[list[Batch], Batch | None]:
        """This rank's micro-batches and the filler (None when it needs none)."""
        if self._read is None:
            mine = list(self._own.iter_batches(batch_size=self._micro, batch_format="numpy"))
            filler = None
            if len(mine) < self._rounds:
                filler = next(iter(self._filler.iter_batches(batch_size=self._micro, batch_format="numpy")))
            self._read = (mine, filler)
        return self._read

    def rounds(self) -> int:
        return self._rounds


class ReadCounter:
    """A BatchSource that counts what passes through it: the rows and token ids a worker read."""

    def __init__(self, source: BatchSource) -> None:
        self._source, self.rows, self.tokens, self.bytes = source, 0, 0, 0

    def iter_batches(self, *, batch_size: int, batch_format: str, drop_last: bool = False) -> Iterator[Batch]:
        for batch in self._source.iter_batches(batch_size=batch_size, batch_format=batch_format, drop_last=drop_last):
            self.rows += len(batch["row_id"])
            self.tokens += sum(len(ids) for name in TOKEN_FIELDS for ids in batch[name])
            self.bytes += sum(_nbytes(column) for column in batch.values())
            yield batch


def _nbytes(column: np.ndarray) -> int:
    """A numpy column's bytes; a list column (an object array of arrays) counts its elements' bytes."""
    if column.dtype != object:
        return int(column.nbytes)
    return sum(np.asarray(value).nbytes for value in column)
