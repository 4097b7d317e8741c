"""The replay contract: which pairs each worker sees at each step, the same in every run.

1. Mixture copies (data.sources): each epoch holds pair p of source s ``rate_s`` times
   (``mixture_rates``: source s fills weight_s / sum(weights) of an epoch as large as all train
   sources together); a fractional rate is floor(rate) copies plus one for the pairs whose seeded
   hash falls below frac(rate) (``mixture_copies``). The copies are made once; every epoch reads them.
2. The seeded order: ``add_order_key`` gives each row (each copy) a seeded hash of its row id, and
   the train set is sorted on it (Ray's sort, in the Ray stage): the same order whatever the block
   layout upstream.
3. Micro-batches (``micro_batches``): an epoch is ``steps_per_epoch`` global batches of A x W
   micro-batches (A accumulation steps, W workers) taken from the front of the ordered set (the
   rest of the epoch is left out). With train.group_by_length, each window of micro-batches' pairs
   is sorted by length, cut, and the cuts permuted (``length_grouped``, seeded by seed and epoch,
   epoch 0 too); without it, from epoch 1 on, micro-batches are permuted within windows of
   WINDOW (``window_shuffle``, seeded by seed + epoch). The stream never depends on W.
4. The per-worker stride: global step s of an epoch is micro-batches [s A W, (s + 1) A W) of that
   stream; rank r takes those whose index is r mod W, in order, A of them per step.
5. The eval shard (``EvalShard``): rank r takes eval micro-batches r, r + W, ... (the last one may
   be partial); every eval pair is on exactly one rank, none dropped.
6. A resume at step k (train.resume_from, a restarted worker group) rebuilds the stream of k's
   epoch and skips to micro-batch k A W of it: the batches an uninterrupted run takes from step k on.

Pure ring and light on purpose: a Ray Data worker unpickles mixture_copies and add_order_key by
importing this module (numpy; DataError's module, pyarrow) instead of the Ray or torch modules.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import Any, Protocol, TypeVar

import numpy as np

from dpo_ray.config import Config
from dpo_ray.data.parse import DataError

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


def micro_batches(
    dataset: BatchSource, cfg: Config, rank: int, world: int, steps_per_epoch: int, start_step: int
) -> Iterator[Batch]:
    """Endless micro-batches for this rank from global step ``start_step`` on (points 3, 4 and 6
    of the module docstring): every rank reads the whole ordered train set, builds the same
    epoch stream, and keeps its stride of each global batch."""
    per_step = cfg.train.gradient_accumulation_steps() * world
    step = start_step
    while True:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        first, end = in_epoch * per_step, steps_per_epoch * per_step
        for index, batch in enumerate(epoch_stream(dataset, cfg, epoch)):
            if index >= end:
                break
            if index >= first and index % world == rank:
                yield batch
        step = (epoch + 1) * steps_per_epoch


def epoch_stream(dataset: BatchSource, cfg: Config, epoch: int) -> Iterator[Batch]:
    """Every micro-batch of one epoch, in order, the same on every rank and for any worker count."""
    micro = cfg.train.micro_batch_size
    if cfg.train.group_by_length:
        return length_grouped(dataset, micro, cfg.train.length_group_window, np.random.default_rng([cfg.train.seed, epoch]))
    batches = iter(dataset.iter_batches(batch_size=micro, batch_format="numpy", drop_last=True))
    if epoch > 0:
        batches = window_shuffle(batches, np.random.default_rng(cfg.train.seed + epoch), window=WINDOW)
    return batches


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


class EvalShard:
    """This rank's eval micro-batches (r, r + W, ...), the first micro-batch and their count, read
    from the eval dataset at the first eval and kept for the later ones: each read would re-run the
    Ray Data pipeline. Holds 1/W of the eval set's token ids."""

    def __init__(self, dataset: BatchSource, micro_batch_size: int, rank: int, world: int) -> None:
        self._dataset, self._micro, self._rank, self._world = dataset, micro_batch_size, rank, world
        self._read: tuple[list[Batch], Batch | None, int] | None = None

    def batches(self) -> tuple[list[Batch], Batch | None, int]:
        if self._read is None:
            mine, first, total = [], None, 0
            for index, batch in enumerate(self._dataset.iter_batches(batch_size=self._micro, batch_format="numpy")):
                first = batch if first is None else first
                total = index + 1
                if index % self._world == self._rank:
                    mine.append(batch)
            self._read = (mine, first, total)
        return self._read

    def rounds(self) -> int:
        """Forwards every rank runs per eval, ceil(total / W): a rank with one micro-batch fewer
        runs one it does not count, so ZeRO-3's gathers match across ranks."""
        return -(-self.batches()[2] // self._world)
