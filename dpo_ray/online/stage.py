"""The generation and judging stages on Ray Data actor pools (orchestration ring).

Each returns plain rows for the driver to write as a round's JSONL: a round's prompts are thousands
to a few hundred thousand short rows, which the driver holds easily. Resources come from
``online.generation.*`` / ``online.judge_*``; the pools are gone before the round's training starts.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import ray
import ray.data

from dpo_ray.config import Config
from dpo_ray.online.generate import GenerateRows, sample_seed
from dpo_ray.online.judges import JudgeRows


class OnlineError(ValueError):
    """A round cannot go on (every response empty, no pair to train on, a judge's bad score)."""


def prompt_key(prompt: str | list[dict[str, str]]) -> str:
    """The prompt as one JSON string: a row's key in every round file (text or messages alike)."""
    return json.dumps(prompt, ensure_ascii=False, sort_keys=True)


def generate(cfg: Config, policy: str, prompts: list[str], *, round_index: int, purpose: str, n: int) -> list[dict[str, Any]]:
    """``n`` sampled responses per prompt (JSON keys) from ``policy``: rows {prompt, sample, response, tokens}."""
    gen = cfg.online.generation
    seeds = [sample_seed(gen.seed, round_index, p, purpose) for p in prompts]
    items = ray.data.from_items([{"prompt": p, "seed": s} for p, s in zip(prompts, seeds)])
    actors = pool_size(gen.actors, gen.num_gpus_per_actor, "online.generation.actors")
    blocks = max(2 * actors, min(len(prompts) // gen.batch_size, 8 * actors), 1)
    ds = items.repartition(blocks).map_batches(
        GenerateRows,
        fn_constructor_kwargs={
            "name_or_path": policy, "generator": gen.generator, "n": n, "use_gpu": gen.num_gpus_per_actor > 0,
            "dtype": cfg.model.dtype, "trust_remote_code": cfg.model.trust_remote_code,
            "max_prompt_length": cfg.data.max_prompt_length, "truncation_mode": cfg.data.truncation_mode,
            "settings": {"max_new_tokens": gen.max_new_tokens, "temperature": gen.temperature, "top_p": gen.top_p},
        },
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=gen.num_gpus_per_actor,
        batch_size=gen.batch_size,
        batch_format="numpy",
    )
    return _sorted_rows(ds.take_all())


def judge(cfg: Config, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows {prompt, sample, response, ...} with ``score`` added by the judge actor pool."""
    on = cfg.online
    actors = pool_size(on.judge_actors, on.judge_num_gpus_per_actor, "online.judge_actors")
    blocks = max(2 * actors, min(len(rows) // on.judge_batch_size, 8 * actors), 1)
    ds = ray.data.from_items(rows).repartition(blocks).map_batches(
        JudgeRows,
        fn_constructor_kwargs={"spec": on.judge, "use_gpu": on.judge_num_gpus_per_actor > 0},
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=on.judge_num_gpus_per_actor,
        batch_size=on.judge_batch_size,
        batch_format="numpy",
    )
    scored = ds.take_all()
    bad = next((row["error"] for row in scored if row["error"]), None)
    if bad is not None:
        raise OnlineError(str(bad))
    for row in scored:
        del row["error"]
    return _sorted_rows(scored)


_CAPPED: set[str] = set()


def pool_size(requested: int, num_gpus: float, key: str) -> int:
    """The actors a CPU pool gets: at most the cluster's CPUs less one, which stays free for Ray
    Data's own tasks (a fixed pool holding every CPU waits forever for its input blocks). GPU actors
    are bounded by the GPUs Ray schedules them on; the request stands."""
    if num_gpus > 0:
        return requested
    cpus = int(ray.cluster_resources().get("CPU", 1))
    fit = max(1, cpus - 1)
    if requested <= fit:
        return requested
    if key not in _CAPPED:
        _CAPPED.add(key)
        print(f"online: {key}={requested} capped at {fit}: the cluster has {cpus} CPUs and one stays free for "
              "Ray Data's tasks", flush=True)
    return fit


def _sorted_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Plain Python values (numpy scalars made JSON-able), in (prompt, sample) order: a stable file,
    whatever the block order."""
    plain = [{k: v.item() if isinstance(v, np.generic) else v for k, v in row.items()} for row in rows]
    return sorted(plain, key=lambda r: (r["prompt"], r["sample"]))
