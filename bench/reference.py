"""Reference stage: actor-pool scoring throughput vs a bare forward loop, pad fraction with and without
length bucketing, and a warm-cache run.

python bench/reference.py   -> bench/results/reference.json
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch

from common import REPO, write_result

sys.path.insert(0, str(REPO))

from dpo_ray.train.collate import collate_pairs  # noqa: E402
from dpo_ray.config_load import load_config  # noqa: E402
from dpo_ray.train.logprobs import sorted_sequence_stats  # noqa: E402
from dpo_ray.modeling import load_model, load_tokenizer  # noqa: E402
from dpo_ray.data.stage import prepare_pairs  # noqa: E402
from dpo_ray.reference.stage import reference_stage, score_reference  # noqa: E402
from dpo_ray.toy import build_tiny_model, make_preference_rows  # noqa: E402

BATCH = 256  # pairs per scoring call (the reference.batch_size default)
ROWS = 16  # reference.rows_per_forward


def varying_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Quickstart pairs with prompts padded by 0-120 filler words: widely varying lengths."""
    rng = random.Random(seed)
    rows = make_preference_rows(n, seed=seed)
    return [{**r, "prompt": " ".join(["please"] * rng.randint(0, 120)) + " " + r["prompt"]} for r in rows]


def bare_loop(model_dir: str, batches: list[dict], threads: int, by_length: bool) -> tuple[float, int]:
    """The same batches, scored the way the pool scores them, in one process: (seconds, real tokens)."""
    torch.set_num_threads(threads)
    model = load_model(model_dir).eval()
    pad = load_tokenizer(model_dir).pad_token_id
    tokens, start = 0, time.perf_counter()
    with torch.inference_mode():
        for b in batches:
            t = collate_pairs(b["prompt_ids"], b["chosen_ids"], b["rejected_ids"], pad_id=pad)
            sorted_sequence_stats(model, t, rows_per_forward=ROWS, by_length=by_length)
            tokens += int(t["attention_mask"].sum())
    return time.perf_counter() - start, tokens


def main() -> None:
    ray.init(address="local", num_cpus=2, log_to_driver=False)
    work = Path(tempfile.mkdtemp(prefix="bench-ref-"))
    rows = make_preference_rows(3000, seed=0)
    model_dir = str(build_tiny_model(work / "model", rows + varying_rows(200), hidden_size=256, num_layers=4, num_heads=4))
    params = sum(p.numel() for p in load_model(model_dir).parameters())
    sets = {"quickstart": rows, "varying_lengths": varying_rows(2000)}
    # Steady state: the quickstart set and twice it (more pairs of the same kind), bucketing on. The
    # pool's extra seconds for the extra tokens is its throughput net of actor start and model load.
    sets["quickstart_x2"] = rows + make_preference_rows(3000, seed=1)
    results = []
    for name, data in sets.items():
        path = work / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in data))
        for bucketing in ((True,) if name == "quickstart_x2" else (False, True)):
            cache = work / f"cache-{name}-{bucketing}"
            cfg = load_config(None, [f"model.name_or_path={model_dir}", f"data.path={path}", "data.max_length=256",
                                     f"reference.batch_size={BATCH}", f"reference.rows_per_forward={ROWS}", f"reference.length_bucketing={str(bucketing).lower()}",
                                     f"reference.cache_dir={cache}", f"output_dir={work / 'out'}"])
            pairs, _, data_id = prepare_pairs(cfg, work / "out")
            start = time.perf_counter()
            scored = score_reference(cfg, pairs).materialize()
            pool_s = time.perf_counter() - start
            pads = scored.sum("ref_pad_tokens")
            batches = list(scored.iter_batches(batch_size=BATCH, batch_format="numpy"))
            bare_s, real = bare_loop(model_dir, batches, threads=1, by_length=bucketing)
            stage = {}
            if name != "quickstart_x2":  # the cache runs: once per set is enough
                _, cold = reference_stage(cfg, pairs, data_id)
                _, warm = reference_stage(cfg, pairs, data_id)
                stage = {"cold_stage_s": round(cold.seconds, 2), "warm_stage_s": round(warm.seconds, 2),
                         "warm_cache_hit": warm.cache_hit}
            results.append({
                "data": name, "length_bucketing": bucketing, "pairs": data_id.rows, "tokens": real,
                "pad_fraction": round(pads / (pads + real), 4),
                "pool_tokens_per_s": round(real / pool_s), "bare_loop_tokens_per_s": round(real / bare_s),
                "pool_vs_bare": round(bare_s / pool_s, 3),
                "pool_seconds_incl_actor_start": round(pool_s, 2), "bare_seconds_excl_model_load": round(bare_s, 2),
                **stage,
            })
            print(results[-1], flush=True)
    one, two = (next(r for r in results if r["data"] == d and r["length_bucketing"]) for d in ("quickstart", "quickstart_x2"))
    marginal = (two["tokens"] - one["tokens"]) / (two["pool_seconds_incl_actor_start"] - one["pool_seconds_incl_actor_start"])
    steady = {
        "pool_marginal_tokens_per_s": round(marginal), "bare_loop_tokens_per_s": two["bare_loop_tokens_per_s"],
        "pool_vs_bare": round(marginal / two["bare_loop_tokens_per_s"], 3),
        "pool_fixed_seconds": round(one["pool_seconds_incl_actor_start"] - one["tokens"] / marginal, 2),
    }
    print(steady, flush=True)
    write_result("reference", {
        "command": "python bench/reference.py",
        "notes": (f"Model: Llama built from config, {params / 1e6:.1f}M parameters, fp32 on CPU; one scoring actor "
                  "(1 CPU) vs a bare loop with 1 torch thread over the same batches of "
                  f"{BATCH} pairs. Pool time includes actor start and model load; the bare loop's excludes its model "
                  "load. Each call's 2B rows run reference.rows_per_forward (16) at a time, length-sorted with "
                  "length_bucketing and in row order without (pool and bare loop alike); no global sort. "
                  "cold_stage_s scores and commits the cache; warm_stage_s reads it "
                  "back (no model loaded)."),
        "runs": results,
        "steady_state": steady,
        "steady_state_notes": ("pool_marginal_tokens_per_s = (tokens(quickstart_x2) - tokens(quickstart)) / (pool "
                               "seconds(quickstart_x2) - pool seconds(quickstart)), bucketing on: the pool's rate net of "
                               "its fixed cost (actor process start, imports, model load, repartition); "
                               "pool_fixed_seconds is that fixed cost; bare_loop_tokens_per_s is on quickstart_x2."),
    })


if __name__ == "__main__":
    main()
