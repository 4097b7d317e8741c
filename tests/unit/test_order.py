"""The replay contract (dpo_ray.train.order) on small in-memory datasets, over several epochs.

The train set is built as the Ray stage builds it (mixture copies, then a sort on add_order_key's
seeded hash) with numpy, and read through a fake of the DataIterator that ray.train gives a worker.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Iterator

import numpy as np
import pytest

from dpo_ray.config import Config, DataConfig, SourceConfig, TrainConfig
from dpo_ray.data.parse import DataError
from dpo_ray.train.order import (
    TOKEN_FIELDS, WINDOW, Batch, EvalShard, ReadCounter, add_order_key, eval_rounds, eval_starts, lane_starts,
    lane_stream, micro_batches, mixture_copies, mixture_rates, rank_lanes, window_shuffle,
)

MICRO, BATCH = 2, 8  # 4 micro-batches per global step: A x W = 4 x 1 = 2 x 2 = 1 x 4


class FakeShard:
    """What micro_batches and EvalShard read: Ray DataIterator.iter_batches over in-memory columns."""

    def __init__(self, columns: Batch) -> None:
        self.columns, self.reads = columns, 0

    def iter_batches(self, *, batch_size: int, batch_format: str, drop_last: bool = False) -> Iterator[Batch]:
        assert batch_format == "numpy"
        self.reads += 1
        n = len(self.columns["row_id"])
        for start in range(0, n - n % batch_size if drop_last else n, batch_size):
            yield {k: v[start:start + batch_size] for k, v in self.columns.items()}


def pairs(n: int, mixture: Iterable[int] | None = None, seed: int = 0) -> Batch:
    """n synthetic tokenized pairs with row ids p0000..., token lists of varying length."""
    rng = np.random.default_rng(seed)
    out: Batch = {"row_id": np.array([f"p{i:04d}" for i in range(n)]),
                  "mixture": np.asarray(list(mixture) if mixture is not None else [0] * n, dtype=np.int64)}
    for name in ("prompt_ids", "chosen_ids", "rejected_ids"):
        col = np.empty(n, dtype=object)  # Ray Data's numpy batches hold list columns as object arrays
        for i in range(n):
            col[i] = np.arange(int(rng.integers(1, 12)))
        out[name] = col
    return out


def ordered(batch: Batch, seed: int, rates: list[float] | None = None) -> Batch:
    """The Ray stage's train set: mixture copies (when rates), the sort on the seeded order key,
    the helper columns dropped (train.trainer.deterministic_shuffle)."""
    if rates is not None:
        batch = mixture_copies(batch, rates, seed)
    keyed = add_order_key(batch, seed)
    order = np.argsort(keyed["_order"], kind="stable")
    return {k: v[order] for k, v in keyed.items() if k not in ("_order", "copy")}


def config(world: int = 1, group: bool = False, seed: int = 42, sources: list[SourceConfig] | None = None) -> Config:
    return Config(train=TrainConfig(batch_size=BATCH, micro_batch_size=MICRO, num_workers=world, group_by_length=group,
                                    length_group_window=4, seed=seed),
                  data=DataConfig(sources=sources or []))


def ids(batches: Iterable[Batch]) -> list[str]:
    return [str(r) for b in batches for r in b["row_id"]]


def take(stream: Iterator[Batch], n: int) -> list[Batch]:
    return [next(stream) for _ in range(n)]


# --- mixture copies -------------------------------------------------------------------------------

def test_mixture_rates_hand_worked() -> None:
    # a: 100 pairs, weight 1; b: 50 pairs, weight 3; an epoch = 150 pairs, a fills 1/4 of it
    # (37.5 pairs: rate 0.375), b 3/4 (112.5 pairs: rate 2.25); an eval source gets no copies
    sources = [SourceConfig("a", "a.jsonl", weight=1.0), SourceConfig("b", "b.jsonl", weight=3.0),
               SourceConfig("held", "h.jsonl", eval=True)]
    counts = {"data/sources/a/train_pairs": 100, "data/sources/b/train_pairs": 50, "data/sources/held/train_pairs": 0}
    assert mixture_rates(config(sources=sources), counts) == pytest.approx([0.375, 2.25, 0.0])
    with pytest.raises(DataError, match="data.sources b .*no usable train pairs"):
        mixture_rates(config(sources=sources), {**counts, "data/sources/b/train_pairs": 0})


def test_mixture_copies_floor_or_ceil_seeded_and_layout_free() -> None:
    n = 1000
    batch = pairs(n, mixture=[0] * 600 + [1] * 400)
    rates = [0.4, 2.5]
    out = mixture_copies(batch, rates, seed=7)
    per_pair = Counter(str(r) for r in out["row_id"])
    for s, rate, members in ((0, 0.4, range(600)), (1, 2.5, range(600, n))):
        copies = [per_pair[f"p{i:04d}"] for i in members]
        assert set(copies) <= {int(rate), int(rate) + 1}  # floor or ceil of the rate, nothing else
        extra = sum(c - int(rate) for c in copies) / len(copies)
        sd = (rate % 1 * (1 - rate % 1) / len(copies)) ** 0.5
        assert abs(extra - rate % 1) < 5 * sd  # the seeded coin lands on frac(rate) of the pairs
    assert abs(len(out["row_id"]) - (600 * 0.4 + 400 * 2.5)) < 5 * (1000 * 0.25) ** 0.5
    # each copy numbered 0..c-1; the other columns travel with their pair
    for rid, c in per_pair.items():
        rows = out["row_id"] == rid
        assert sorted(out["copy"][rows]) == list(range(c))
        assert all(len(p) == len(batch["prompt_ids"][int(rid[1:])]) for p in out["prompt_ids"][rows])
    # the same copies whatever the block layout (Ray hands map_batches any split), and seeded
    halves = [mixture_copies({k: v[sl] for k, v in batch.items()}, rates, seed=7) for sl in (slice(0, 333), slice(333, n))]
    assert list(np.concatenate([h["row_id"] for h in halves])) == list(out["row_id"])
    other = Counter(str(r) for r in mixture_copies(batch, rates, seed=8)["row_id"])
    assert other != per_pair


def test_order_key_seeded_and_layout_free() -> None:
    batch = mixture_copies(pairs(60), [1.5], seed=3)
    whole = ids([ordered(batch, seed=3)])
    parts = [add_order_key({k: v[sl] for k, v in batch.items()}, 3) for sl in (slice(0, 17), slice(17, None))]
    keys = np.concatenate([p["_order"] for p in parts])
    assert list(batch["row_id"][np.argsort(keys, kind="stable")]) == whole
    assert whole != ids([ordered(batch, seed=4)])
    assert len(set(add_order_key(batch, 3)["_order"])) == len(batch["row_id"])  # each copy its own place


# --- the epoch stream and its windows -------------------------------------------------------------

def test_window_shuffle_permutes_within_windows() -> None:
    items = list(range(70))  # two full windows of 32 and a partial one of 6
    out = list(window_shuffle(iter(items), np.random.default_rng(5), window=WINDOW))
    assert sorted(out) == items and out != items
    for start in range(0, 70, WINDOW):
        assert sorted(out[start:start + WINDOW]) == items[start:start + WINDOW]
    assert out == list(window_shuffle(iter(items), np.random.default_rng(5), window=WINDOW))
    assert out != list(window_shuffle(iter(items), np.random.default_rng(6), window=WINDOW))


def pieces(columns: Batch, cuts: list[int]) -> list[FakeShard]:
    """np.split of the columns at ``cuts``: what split_at_indices makes of a materialized dataset."""
    bounds = [0, *cuts, len(columns["row_id"])]
    return [FakeShard({k: v[a:b] for k, v in columns.items()}) for a, b in zip(bounds, bounds[1:])]


@pytest.mark.parametrize("group", [False, True])
def test_lane_stream_seeded_per_epoch_and_lane(group: bool) -> None:
    lane = FakeShard(ordered(pairs(80 * MICRO), seed=42))
    cfg = config(group=group)
    epochs = [ids(lane_stream(lane, cfg, e, 3)) for e in range(3)]
    assert epochs[0] != epochs[1] != epochs[2] != epochs[0]
    assert all(sorted(e) == sorted(epochs[0]) for e in epochs)  # 160 pairs, a whole number of windows
    assert epochs == [ids(lane_stream(lane, cfg, e, 3)) for e in range(3)]  # re-read: the same
    assert epochs[1] != ids(lane_stream(lane, config(group=group, seed=43), 1, 3))
    assert epochs[1] != ids(lane_stream(lane, cfg, 1, 4))  # each lane its own permutation
    plain = ids([lane.columns])
    if not group:  # epoch 0 is the seeded order itself; later epochs permute within windows of WINDOW micro-batches
        assert epochs[0] == plain
        span = WINDOW * MICRO
        for start in range(0, len(plain), span):
            assert sorted(epochs[1][start:start + span]) == sorted(plain[start:start + span])


def test_length_grouping_cuts_each_window_by_width() -> None:
    columns = ordered(pairs(4 * 4 * MICRO + 3), seed=42)  # 4 windows of 4 micro-batches, a last of 3 pairs
    batches = list(lane_stream(FakeShard(columns), config(group=True), 0, 0))
    assert len(batches) == 17 and all(len(b["row_id"]) == MICRO for b in batches)  # the odd pair left out
    assert set(ids(batches[16:])) < set(ids([columns])[32:])
    plain = ids([columns])
    width = {str(r): len(p) + max(len(c), len(j)) for r, p, c, j in
             zip(columns["row_id"], columns["prompt_ids"], columns["chosen_ids"], columns["rejected_ids"])}
    for w in range(4):
        window = batches[4 * w:4 * w + 4]
        assert sorted(ids(window)) == sorted(plain[8 * w:8 * w + 8])  # a window's pairs stay in it
        cuts = sorted((sorted(width[r] for r in ids([b])) for b in window))
        assert all(a[-1] <= b[0] for a, b in zip(cuts, cuts[1:]))  # cut from the width-sorted window


# --- micro-batches: lanes, epochs, workers, resume ------------------------------------------------

def rank_streams(columns: Batch, world: int, group: bool, steps_per_epoch: int, start: int = 0,
                 lanes: list[FakeShard] | None = None) -> list[Iterator[Batch]]:
    """Each rank's micro_batches over its own lanes, cut from the ordered set as the trainer cuts them."""
    cfg = config(world=world, group=group)
    lanes = lanes or pieces(columns, lane_starts(cfg, steps_per_epoch))
    return [micro_batches([lanes[c] for c in rank_lanes(cfg, r, world)], rank_lanes(cfg, r, world), cfg,
                          steps_per_epoch, start) for r in range(world)]


def global_batches(streams: list[Iterator[Batch]], steps: int) -> list[list[str]]:
    """Each step's global batch in lane order, rebuilt from the ranks' shares: lane c of a step is
    rank c // A's (c mod A)-th micro-batch of that step."""
    accum = BATCH // (MICRO * len(streams))
    shares = [take(s, steps * accum) for s in streams]
    return [ids(shares[c // accum][step * accum + c % accum] for c in range(BATCH // MICRO)) for step in range(steps)]


@pytest.mark.parametrize("group", [False, True])
@pytest.mark.parametrize("mixture", [False, True])
def test_each_epoch_covers_each_pair_its_copies_times(group: bool, mixture: bool) -> None:
    if mixture:  # a 1.5-rate source and a 0.75-rate one; a seed whose copies fill whole global batches
        raw, rates = pairs(40, mixture=[0] * 16 + [1] * 24), [1.5, 0.75]
        seed = next(s for s in range(100) if len(mixture_copies(raw, rates, s)["row_id"]) % BATCH == 0)
        copies = Counter(str(r) for r in mixture_copies(raw, rates, seed)["row_id"])
        columns = ordered(raw, seed, rates)
    else:
        columns = ordered(pairs(48), seed=42)
        copies = Counter(ids([columns]))
    steps_per_epoch = len(columns["row_id"]) // BATCH
    assert steps_per_epoch * BATCH == sum(copies.values())
    steps = global_batches(rank_streams(columns, 1, group, steps_per_epoch), 3 * steps_per_epoch)
    for e in range(3):
        seen = Counter(r for batch in steps[e * steps_per_epoch:(e + 1) * steps_per_epoch] for r in batch)
        assert seen == copies, f"epoch {e}"
    assert steps[:steps_per_epoch] != steps[steps_per_epoch:2 * steps_per_epoch]  # a new order each epoch


@pytest.mark.parametrize("group", [False, True])
def test_each_epoch_takes_the_lanes_and_leaves_out_the_tail(group: bool) -> None:
    columns = ordered(pairs(6 * BATCH + 5), seed=42)  # 6 global batches and 5 pairs left out per epoch
    steps = global_batches(rank_streams(columns, 2, group, steps_per_epoch=6), 12)
    plain, lane_rows = ids([columns]), 6 * MICRO
    for e in range(2):
        epoch = steps[6 * e:6 * e + 6]
        assert sorted(r for batch in epoch for r in batch) == sorted(plain[:6 * BATCH])  # the tail is never taken
        for c in range(BATCH // MICRO):  # each global batch: one micro-batch of every lane, lane c's from its slice
            lane = set(plain[c * lane_rows:(c + 1) * lane_rows])
            assert all(set(batch[c * MICRO:(c + 1) * MICRO]) <= lane for batch in epoch)
        if not group and e == 0:  # epoch 0: micro-batch s of each lane, in the seeded order
            assert epoch[1][:MICRO] == plain[MICRO:2 * MICRO]


@pytest.mark.parametrize("group", [False, True])
def test_one_two_four_workers_take_the_same_global_batches_reading_their_own_lanes(group: bool) -> None:
    columns = ordered(pairs(5 * BATCH + 3), seed=42)
    by_world = {w: global_batches(rank_streams(columns, w, group, steps_per_epoch=5), 10) for w in (1, 2, 4)}
    assert by_world[1] == by_world[2] == by_world[4]
    for world in (2, 4):  # each rank reads its own lanes only: 1/W of an epoch's rows, each once an epoch
        cfg = config(world=world, group=group)
        lanes = pieces(columns, lane_starts(cfg, 5))
        counters = [ReadCounter(lane) for lane in lanes]
        streams = rank_streams(columns, world, group, steps_per_epoch=5, lanes=counters)  # type: ignore[arg-type]
        global_batches(streams, 10)  # two epochs
        for rank in range(world):
            mine = [counters[c] for c in rank_lanes(cfg, rank, world)]
            assert sum(c.rows for c in mine) == 2 * 5 * BATCH // world
        assert counters[-1].rows == 0 and len(lanes[-1].columns["row_id"]) == 3  # the tail: never read


@pytest.mark.parametrize("group", [False, True])
@pytest.mark.parametrize("world", [1, 2])
def test_resume_mid_epoch_replays_what_an_uninterrupted_run_takes(group: bool, world: int) -> None:
    columns = ordered(pairs(5 * BATCH + 3), seed=42)
    full = global_batches(rank_streams(columns, world, group, steps_per_epoch=5), 15)  # three epochs
    for k in (2, 5, 7, 13):  # mid epoch 0, an epoch boundary, mid epoch 1, mid epoch 2
        resumed = global_batches(rank_streams(columns, world, group, steps_per_epoch=5, start=k), 15 - k)
        assert resumed == full[k:], f"resume at step {k}"


def test_read_counter_counts_rows_and_token_ids() -> None:
    columns = pairs(10)
    counter = ReadCounter(FakeShard(columns))
    assert sum(len(b["row_id"]) for b in counter.iter_batches(batch_size=4, batch_format="numpy", drop_last=True)) == 8
    assert counter.rows == 8
    assert counter.tokens == sum(len(columns[name][i]) for name in TOKEN_FIELDS for i in range(8))
    assert counter.bytes == counter.tokens * 8 + columns["row_id"][:8].nbytes + columns["mixture"][:8].nbytes  # int64 ids


# --- the eval shard -------------------------------------------------------------------------------

@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_eval_shard_every_pair_on_exactly_one_rank(world: int) -> None:
    columns = pairs(23)  # 6 micro-batches of 4, the last of 3
    shares = pieces(columns, eval_starts(23, 4, world))
    rounds = eval_rounds(23, 4, world)
    assert rounds == -(-6 // world)
    shards = [EvalShard(share, shares[0], 4, rounds) for share in shares]
    seen = Counter(r for s in shards for r in ids(s.batches()[0]))
    assert seen == Counter(ids([columns]))  # none dropped, none twice
    for s, share in zip(shards, shares):
        mine, filler = s.batches()
        assert len(mine) <= rounds and len(share.columns["row_id"]) <= rounds * 4  # its own share only
        assert (filler is None) == (len(mine) == rounds)
        if filler is not None:  # a forward it does not count: rank 0's first micro-batch
            assert ids([filler]) == ids([columns])[:4]
    reads = [share.reads for share in shares]
    for s in shards:
        s.batches()
    assert [share.reads for share in shares] == reads  # kept, not read again


def test_order_imports_neither_ray_nor_torch() -> None:
    code = "import sys, dpo_ray.train.order; print('ray' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
