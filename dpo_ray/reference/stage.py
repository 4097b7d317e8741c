"""The reference stage: every pair scored once by the frozen reference model on an autoscaling
actor pool (reference/scorer.py), the log-probs cached under a content key; a later run, restart
or sweep trial with the same key reads them and loads no model."""

from __future__ import annotations

import time
from typing import Any

import ray
import ray.data

from dpo_ray import faults
from dpo_ray.config import Config, ConfigError
from dpo_ray.config_check import PackingUnsupported, cause_of
from dpo_ray.config_load import dtype_name
from dpo_ray.data.rows import column_sums
from dpo_ray.data.stage import commit_cached, read_cached
from dpo_ray.data.tokenize import TOKENIZE_VERSION
from dpo_ray.reference.placement import pool_plan
from dpo_ray.stats import RefStats
from dpo_ray.store import CacheStore, DataId, cache_key, model_identity, versions


def reference_key(cfg: Config, data_id: DataId) -> tuple[str, dict[str, Any]]:
    """The cache key: model and tokenizer identity, tokenized data, dtype, length settings."""
    ref, d = cfg.reference, cfg.data
    parts = {
        "model": model_identity(*cfg.reference_model()),
        "data": data_id.key(),
        "rows": data_id.rows,
        "dtype": dtype_name(ref.dtype, on_gpu=ref.num_gpus_per_actor > 0),
        "lengths": {"max_length": d.max_length, "max_prompt_length": d.max_prompt_length, "truncation_mode": d.truncation_mode},
        "tokenize": {"version": TOKENIZE_VERSION, "jointly": d.tokenize_jointly},
    }
    if cfg.reference_attention() is not None:  # a chosen kernel scores a little differently; the default keeps older keys
        parts["attention"] = cfg.reference_attention()
    return cache_key(parts), parts


def check_reference_tokenizer(cfg: Config) -> None:
    """A reference.name_or_path must read the policy's token ids as the policy does: the same vocabulary."""
    if cfg.reference.name_or_path is None:
        return
    from dpo_ray.modeling import load_tokenizer

    policy = load_tokenizer(cfg.model.name_or_path, cfg.model.revision, cfg.model.trust_remote_code)
    reference = load_tokenizer(cfg.reference.name_or_path, None, cfg.model.trust_remote_code)
    if policy.get_vocab() != reference.get_vocab():
        raise ConfigError(f"reference.name_or_path={cfg.reference.name_or_path}: its tokenizer's vocabulary differs from "
                          f"model.name_or_path={cfg.model.name_or_path}'s; the reference must share the policy's tokenizer")


def reference_stage(cfg: Config, pairs: ray.data.Dataset, data_id: DataId) -> tuple[ray.data.Dataset, RefStats]:
    """Cached reference log-probs for ``pairs``: a committed cache entry is read as is (no model is
    loaded); otherwise the actor pool scores the pairs and the result is committed for later runs."""
    start = time.perf_counter()
    key, parts = reference_key(cfg, data_id)
    store = CacheStore(cfg.reference.cache_dir) if cfg.reference.cache_dir else None
    hit = read_cached(store, key, rows=data_id.rows) if store else None
    if hit is not None:
        print(f"reference: cache hit ({key})", flush=True)
        return hit[0], RefStats(skipped=False, cache_hit=True, seconds=time.perf_counter() - start,
                                pad_fraction=hit[1]["pad_fraction"], key=key)
    check_reference_tokenizer(cfg)
    try:
        scored = score_reference(cfg, pairs).materialize()
    except Exception as err:  # a scoring call's error: only a packing refusal is turned into one line
        refusal = cause_of(err, PackingUnsupported)
        if refusal is None:
            raise
        raise ConfigError(str(refusal).splitlines()[0]) from None  # Ray Data appends its retry note on new lines
    columns = ("ref_pad_tokens", "ref_tokens")
    sums = scored.map_batches(column_sums, fn_kwargs={"columns": columns}, batch_size=None, batch_format="numpy").take_all()
    pads, real = (sum(int(row[c]) for row in sums) for c in columns)
    pad_fraction = pads / (pads + real) if pads + real else 0.0
    if store is not None:
        commit_cached(store, key, scored, {"parts": parts, "versions": versions(), "pad_fraction": pad_fraction})
    print(f"reference: scored {data_id.rows} pairs ({key}), pad fraction {pad_fraction:.3f}", flush=True)
    return scored, RefStats(skipped=False, cache_hit=False, seconds=time.perf_counter() - start,
                            pad_fraction=pad_fraction, key=key)


def score_reference(cfg: Config, pairs: ray.data.Dataset) -> ray.data.Dataset:
    """Add the reference columns with an autoscaling actor pool of ReferenceScorer.

    Length bucketing happens inside each call: its 2 x reference.batch_size rows are sorted by length
    and scored reference.rows_per_forward at a time. No global sort: it was a barrier before the
    first forward (a shuffle of every token id) and cost more than the padding it saved.
    """
    from dpo_ray.reference.scorer import ReferenceScorer  # torch and transformers: a cache hit does not load them

    ref = cfg.reference
    plan = pool_plan(ref, [n["Resources"].get("GPU", 0.0) for n in ray.nodes() if n["Alive"]])
    if plan.warning:
        print(plan.warning, flush=True)
    blocks = max(4 * ref.max_actors, 8)  # a single block would run on one actor only
    return pairs.repartition(blocks).map_batches(
        ReferenceScorer,
        fn_constructor_kwargs={
            "name_or_path": cfg.reference_model()[0], "revision": cfg.reference_model()[1],
            "dtype": ref.dtype, "use_gpu": ref.num_gpus_per_actor > 0, "trust_remote_code": cfg.model.trust_remote_code,
            "rows_per_forward": ref.rows_per_forward, "length_bucketing": ref.length_bucketing,
            "batch_tokens": ref.batch_tokens, "padding_free": ref.padding_free, "attn_implementation": cfg.reference_attention(),
            "faults": faults.from_env(),  # the test switch (dpo_ray.faults); {} in a user's run
            "num_gpus": plan.num_gpus_per_actor,  # above 1: one model spread over the actor's GPUs
        },
        compute=ray.data.ActorPoolStrategy(min_size=plan.min_size, max_size=plan.max_size),
        num_gpus=plan.num_gpus_per_actor,
        batch_size=ref.batch_size,
        batch_format="numpy",
    )
