"""Train batches: pad-token fraction with and without length grouping (train.group_by_length), and
what each worker reads of the train and eval sets for 1, 2 and 4 workers.

python bench/padding.py                                -> bench/results/padding.json
python bench/padding.py --smoke --results-dir /tmp/x   -> 200 varying-length pairs, micro-batch 4 only

The train set is the one a run trains on (pipeline.prepare_datasets: tokenized, split, seeded order),
and the micro-batches are the train loop's own (train.order.micro_batches, one worker, one epoch),
collated as the trainer collates them; no model runs, so the figure is exact and cheap. Pad fraction =
1 - real tokens / (2B x T) over the epoch, what a run reports as perf/pad_fraction.

Worker reads: the datasets the trainer hands each rank (train.trainer.worker_datasets: its own lanes
and eval share, split from the same materialized, ordered sets), iterated as the train loop iterates
them for one epoch (train.order.micro_batches, EvalShard) through train.order.ReadCounter: rows, token
ids and bytes that came out of Ray Data into the rank. Before issue 18 every rank read the whole
ordered train and eval sets each epoch and kept its stride.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import ray

from common import REPO, RESULTS, write_result
from reference import varying_rows

sys.path.insert(0, str(REPO))

from dpo_ray.train.collate import collate_pairs, count_tokens  # noqa: E402
from dpo_ray.config import Config  # noqa: E402
from dpo_ray.config_load import load_config, resolve_paths
from dpo_ray.modeling import load_tokenizer  # noqa: E402
from dpo_ray.run import prepare_datasets  # noqa: E402
from dpo_ray.toy import build_tiny_model, make_preference_rows  # noqa: E402
from dpo_ray.train.order import EvalShard, ReadCounter, micro_batches, rank_lanes  # noqa: E402
from dpo_ray.train.trainer import worker_datasets  # noqa: E402

MICRO_BATCH_SIZES = (4, 8, 16)


def data_plan(smoke: bool) -> list[str]:
    """The train sets measured. --smoke measures varying_lengths alone, where grouping has padding to save:
    quickstart's is the same prepare_datasets and epoch_pad_fraction on other pairs."""
    return ["varying_lengths"] if smoke else ["quickstart", "varying_lengths"]


def one_epoch(sources: list[Any], lanes: range, cfg: Config, steps_per_epoch: int) -> Iterator[dict[str, Any]]:
    """One epoch of a rank's micro-batches from its own lane datasets, as the train loop takes them."""
    return islice(micro_batches(sources, lanes, cfg, steps_per_epoch, start_step=0), steps_per_epoch * len(lanes))


def epoch_pad_fraction(train_ds: ray.data.Dataset, eval_ds: ray.data.Dataset, cfg: Config, steps_per_epoch: int,
                       pad_id: int) -> float:
    """Pad share of one epoch of the train loop's micro-batches (rank 0 of 1)."""
    real = slots = 0
    datasets, _ = worker_datasets(cfg, train_ds, eval_ds, steps_per_epoch)
    lanes = rank_lanes(cfg, rank=0, world=1)
    for b in one_epoch([datasets[f"lane_{c}"] for c in lanes], lanes, cfg, steps_per_epoch):
        t = collate_pairs(b["prompt_ids"], b["chosen_ids"], b["rejected_ids"], pad_id=pad_id)
        real, slots = real + count_tokens(t), slots + t["attention_mask"].numel()
    return 1 - real / slots


WORKER_COUNTS = (1, 2, 4)


def worker_reads(train_ds: ray.data.Dataset, eval_ds: ray.data.Dataset, base: list[str], train_pairs: int) -> list[dict[str, Any]]:
    """Per worker count: each rank's rows, token ids and bytes read in one epoch (train and eval)."""
    rows = []
    for world in WORKER_COUNTS:
        cfg = load_config(None, [*base, "train.batch_size=32", "train.micro_batch_size=4", f"train.num_workers={world}"])
        steps = train_pairs // cfg.train.batch_size
        datasets, rounds = worker_datasets(cfg, train_ds, eval_ds, steps)
        train, evals = [], []
        for rank in range(world):
            lanes = rank_lanes(cfg, rank, world)
            counters = [ReadCounter(datasets[f"lane_{c}"]) for c in lanes]
            for _ in one_epoch(counters, lanes, cfg, steps):
                pass
            train.append({"rows": sum(c.rows for c in counters), "tokens": sum(c.tokens for c in counters),
                          "bytes": sum(c.bytes for c in counters)})
            own = ReadCounter(datasets[f"eval_{rank}"])
            EvalShard(own, datasets["eval_0"], cfg.train.micro_batch_size, rounds).batches()
            evals.append(own.rows)
        row = {"workers": world, "train_rows_per_worker": [t["rows"] for t in train],
               "train_bytes_per_worker": [t["bytes"] for t in train],
               "train_tokens_per_worker": [t["tokens"] for t in train], "eval_rows_per_worker": evals}
        rows.append(row)
        print(row, flush=True)
    full = rows[0]
    for row in rows:  # each worker's share of what one worker reads (the whole epoch); before issue 18: 1.0
        row["max_share_of_one_worker_bytes"] = round(max(row["train_bytes_per_worker"]) / full["train_bytes_per_worker"][0], 4)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="200 varying-length pairs, micro-batch 4 only")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where padding.json goes")
    args = parser.parse_args()
    ray.init(address="local", num_cpus=2, log_to_driver=False, include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    work = Path(tempfile.mkdtemp(prefix="bench-pad-"))
    rows = make_preference_rows(300 if args.smoke else 3000, seed=0)
    model_dir = str(build_tiny_model(work / "model", rows + varying_rows(200)))
    pad_id = load_tokenizer(model_dir).pad_token_id
    runs = []
    datasets = {"quickstart": rows, "varying_lengths": varying_rows(200 if args.smoke else 2000)}
    for name in data_plan(args.smoke):
        data = datasets[name]
        path = work / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in data))
        base = [f"model.name_or_path={model_dir}", f"data.path={path}", "data.max_length=256", "loss.type=simpo",
                f"output_dir={work / name}", "overwrite_output_dir=true"]
        prepared = prepare_datasets(resolve_paths(load_config(None, base)))  # reference-free: no scoring needed
        for micro in (4,) if args.smoke else MICRO_BATCH_SIZES:
            row = {"data": name, "train_pairs": prepared.stats.epoch_train_pairs, "micro_batch_size": micro}
            for grouped in (False, True):
                cfg = load_config(None, [*base, "train.batch_size=32", f"train.micro_batch_size={micro}",
                                         f"train.group_by_length={str(grouped).lower()}"])
                steps = prepared.stats.epoch_train_pairs // cfg.train.batch_size
                row["grouped" if grouped else "ungrouped"] = round(epoch_pad_fraction(prepared.train, prepared.eval, cfg, steps, pad_id), 4)
            runs.append(row)
            print(row, flush=True)
        if name == "varying_lengths":
            reads = worker_reads(prepared.train, prepared.eval, base, prepared.stats.epoch_train_pairs)
    path = write_result("padding", {
        "command": "python bench/padding.py" + (" --smoke" if args.smoke else ""),
        "notes": ("Pad fraction of one epoch of train micro-batches (train.batch_size=32, one worker), without and with "
                  "train.group_by_length (windows of train.length_group_window=32 micro-batches sorted by padded width, "
                  "then permuted by a seeded RNG). quickstart: 3,000 toy pairs; varying_lengths: 2,000 pairs whose "
                  "prompts carry 0-120 filler words. Tokenizer: the bench's tiny trained tokenizer, data.max_length=256."),
        "runs": runs,
        "worker_reads": reads,
        "worker_reads_notes": ("varying_lengths' train and eval sets, batch 32 in micro-batches of 4, one epoch; each rank "
                               "iterates only the datasets train.trainer.worker_datasets gives it. Before issue 18 each "
                               "rank read the whole ordered train set (max_share 1.0 for every worker count)."),
    }, args.results_dir)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
