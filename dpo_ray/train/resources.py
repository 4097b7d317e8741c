"""``auto`` resource settings resolved against the cluster's nodes. Pure ring: no Ray import.

The orchestration passes each alive node's total resources (Ray's ``ray.nodes()[i]["Resources"]``);
the result is a config with plain numbers, which the workers receive, and one line per resolved
key for the summary.
"""

from __future__ import annotations

import dataclasses

from dpo_ray.config import Config, TrainConfig

GPU_DATA_CPUS_CAP = 8
"""CPUs a GPU worker reserves at most under auto: its data work (collation, the eval shard) needs few."""


def auto_cpus_per_worker(train: TrainConfig, nodes: list[dict[str, float]]) -> tuple[int, str]:
    """The most CPUs per worker such that all ``train.num_workers`` workers fit on ``nodes`` at once.

    On CPU: the CPUs are shared among the workers (2 workers on one 2-CPU node get 1 each; 1 worker
    gets both), found as the largest c whose bundles of c CPUs still place every worker (each node
    holds floor(CPUs / c) of them; STRICT_SPREAD needs a node per worker, STRICT_PACK one node
    for all). On GPU: the fewest CPUs per GPU on any GPU node, capped at GPU_DATA_CPUS_CAP. 1 when
    no node has the resource yet (an autoscaling cluster that starts at zero).
    """
    workers = train.num_workers
    if train.use_gpu:
        shares = [int(n.get("CPU", 0) // n["GPU"]) for n in nodes if n.get("GPU", 0) >= 1]
        if not shares:
            return 1, "no GPU node is up yet"
        cpus = max(1, min(min(shares), GPU_DATA_CPUS_CAP))
        return cpus, f"{min(shares)} CPUs per GPU on the node, at most {GPU_DATA_CPUS_CAP}"
    counts = sorted((int(n.get("CPU", 0)) for n in nodes), reverse=True)
    total = sum(counts)
    if total < workers:
        return 1, f"{total} CPUs in the cluster for {workers} workers"

    def fits(c: int) -> bool:
        if train.placement_strategy == "STRICT_SPREAD":
            return sum(n >= c for n in counts) >= workers
        if train.placement_strategy == "STRICT_PACK":  # every worker on one node
            return counts[0] // c >= workers
        return sum(n // c for n in counts) >= workers

    cpus = next((c for c in range(total // workers, 0, -1) if fits(c)), 1)
    where = f"{counts[0]} CPUs on the node" if len(counts) == 1 else f"{total} CPUs on {len(counts)} nodes"
    return cpus, f"{where} for {workers} worker{'s' if workers > 1 else ''}"


def resolve_auto(cfg: Config, nodes: list[dict[str, float]]) -> tuple[Config, list[str]]:
    """``cfg`` with train.cpus_per_worker and train.zero_stage as numbers; a note for each auto one."""
    t, notes = cfg.train, []
    cpus = t.cpus_per_worker
    if cpus == "auto":
        cpus, why = auto_cpus_per_worker(t, nodes)
        notes.append(f"train.cpus_per_worker={cpus} ({why})")
    zero = t.resolved_zero_stage()
    if t.zero_stage == "auto":
        ranks = f"{t.num_workers} rank{'s' if t.num_workers > 1 else ''}"
        notes.append(f"train.zero_stage={zero} ({ranks}{'' if zero or t.num_workers > 1 else ': ZeRO would partition nothing'})")
    return dataclasses.replace(cfg, train=dataclasses.replace(t, cpus_per_worker=cpus, zero_stage=zero)), notes
