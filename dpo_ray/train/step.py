"""One optimizer step of a rank: its micro-batches (micro_batch_size pairs each, or cut to
train.micro_batch_tokens), forward, backward and DeepSpeed's step; and peak memory per interval.

Worker ring without Ray: torch.distributed collectives only (the loop, train/loop.py, calls it).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from dpo_ray.config import Config, TrainConfig
from dpo_ray.train.collate import budget_cuts, pair_costs, split_to
from dpo_ray.train.metrics import SUM_FIELDS, metric_sums
from dpo_ray.train.objective import batch_objective

Batch = dict[str, np.ndarray]


def train_step(engine: Any, batches: Iterator[Batch], cfg: Config, pad_id: int,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One optimizer step over this rank's gradient_accumulation_steps micro-batches of the order
    (train/order.py). Returns the metric sums and (real tokens, token slots, micro-batches), both
    all-reduced over the ranks, and this rank's largest micro-batch in token slots.

    With train.micro_batch_tokens those pairs are re-cut to the token budget (``budget_batches``) and
    each micro-batch's loss is its pairs' sum x W / batch_size, without DeepSpeed's 1 / accumulation:
    with the ranks' gradients averaged (1 / W), the step's gradient is the mean over its batch_size
    pairs however they were cut, so the trajectory does not depend on the budget's cuts, W or a resume."""
    t = cfg.train
    sums = torch.zeros(len(SUM_FIELDS), dtype=torch.float64, device=device)
    tokens = torch.zeros(3, dtype=torch.int64, device=device)  # real tokens, token slots (pads included), micro-batches
    step_batches = [next(batches) for _ in range(t.gradient_accumulation_steps())]
    budget = t.micro_batch_tokens is not None
    micro = budget_batches(step_batches, t, device) if budget else step_batches
    largest = 0
    for i, batch in enumerate(micro):
        if budget:  # this rank's count of micro-batches varies by step: DeepSpeed is told where the step ends
            engine.set_gradient_accumulation_boundary(i == len(micro) - 1)
        out = batch_objective(engine, batch, cfg.loss, pad_id=pad_id, device=device, chunk_size=t.logps_chunk_size,
                              padding_free=t.padding_free)
        if budget:
            engine.backward(out.result.losses.sum() * dist.get_world_size() / t.batch_size, scale_wrt_gas=False)
        else:
            engine.backward(out.result.losses.mean())  # DeepSpeed divides by the accumulation steps
        engine.step()  # steps the optimizer and scheduler only at the accumulation boundary
        sums += metric_sums(out.result, out.stats, beta=cfg.loss.beta)
        tokens += torch.tensor([out.num_tokens, out.padded_tokens, 1], device=device)
        largest = max(largest, out.padded_tokens)
    dist.all_reduce(sums)
    dist.all_reduce(tokens)
    return sums, tokens, largest


def budget_batches(step_batches: list[Batch], t: TrainConfig, device: torch.device) -> list[Batch]:
    """This rank's pairs of one step, length-sorted (stable) and cut (collate.budget_cuts) to
    t.micro_batch_tokens token slots (padded: pairs x 2 x the longest row; packed: real tokens). Every rank then cuts its
    own into the largest count any rank needs (a collective), so all run as many forwards (ZeRO-3's
    gathers) and reach DeepSpeed's boundary together. A pure function of the step's pairs: a resumed
    run cuts them the same."""
    assert t.micro_batch_tokens is not None
    pairs = {k: np.concatenate([b[k] for b in step_batches]) for k in step_batches[0]}
    widths, real = pair_costs(pairs["prompt_ids"], pairs["chosen_ids"], pairs["rejected_ids"])
    order = np.argsort(widths, kind="stable")
    costs = (real if t.padding_free else widths)[order]
    cuts = budget_cuts(widths[order], real[order], t.micro_batch_tokens, t.padding_free)
    count = torch.tensor([len(cuts)], dtype=torch.int64, device=device)
    dist.all_reduce(count, op=dist.ReduceOp.MAX)
    cuts = split_to(cuts, int(count.item()), costs)
    return [{k: v[order[c]] for k, v in pairs.items()} for c in cuts]


def batching(t: TrainConfig, attention: str) -> str:
    """How micro-batches were made, and why, and the attention kernel the model ran (model.attn_implementation,
    or transformers' default), for metrics.json and the summary (perf/batching)."""
    size = (f"up to {t.micro_batch_tokens} token slots each (train.micro_batch_tokens)" if t.micro_batch_tokens
            else f"{t.micro_batch_size} pairs each (train.micro_batch_size)")
    mode = ("packed (train.padding_free: one row per micro-batch, no pads)" if t.padding_free
            else "padded (train.padding_free off, the default: without flash-attention a packed row's dense block mask "
                 "cost more than the pads, 0.32x on CPU; README)")
    return f"{mode}, {size}, {attention} attention"


class PeakMemory:
    """Peak memory since the last ``interval()`` call, in MiB: the RSS high-water mark on CPU (reset
    through /proc/self/clear_refs, Linux), allocated memory on GPU (torch's peak stats). ``overall``
    keeps the largest seen, since a reset also lowers what getrusage reports."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.overall, self.resets = device, 0.0, True

    def interval(self) -> float:
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            peak = _rss_high_water_mib()
            if self.resets:
                try:
                    with open("/proc/self/clear_refs", "w") as f:
                        f.write("5")  # 5: reset the peak RSS to the current RSS
                except OSError:  # no such file, or not writable here: the peak since start, as getrusage gives
                    self.resets = False
        self.overall = max(self.overall, peak)
        return peak


def _rss_high_water_mib() -> float:
    import resource

    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
