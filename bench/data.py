"""Data stage at scale: tokenization throughput with 1 and 2 CPUs, driver memory as the input grows,
and the tokenized-cache rerun.

python bench/data.py [--pairs 100000] [--large 400000] [--results-dir DIR]   -> bench/results/data.json
python bench/data.py --smoke --results-dir /tmp/x                             -> 2,000 and 8,000 pairs, 3 processes
Issue 4: pairs/s with 1 and 2 CPUs on 100k synthetic pairs; peak driver RSS at 100k vs 400k pairs must
grow < 20%; a rerun with the same tokenized-cache key skips tokenization. Each measurement is a fresh
subprocess pinned to `cpus` cores (a fresh local Ray, `cpus` tokenizer actors).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import REPO, RESULTS, machine

sys.path.insert(0, str(REPO))

MAX_GROWTH = 0.20
MIB = 2**20
Measurement = tuple[int, int, str]  # (pairs, cpus, tokenized cache: off | cold | rerun)


def measurement_plan(smoke: bool, small: int, large: int) -> dict[str, list[Measurement]]:
    """The measurements each result section holds; one that two sections name runs once. --smoke runs
    each of the three cache modes once, 3 fresh processes instead of 5: no 1-CPU run (the same
    measurement pinned to another core count), so no 2-vs-1 speedup, and the cold-cache run stands
    for the 2-CPU throughput and the memory baseline (the same read, tokenize and validate, plus the
    cache write)."""
    if smoke:
        return {"throughput": [(small, 2, "cold")], "memory": [(small, 2, "cold"), (large, 2, "off")],
                "cache": [(small, 2, "cold"), (small, 2, "rerun")]}
    return {"throughput": [(small, 1, "off"), (small, 2, "off")], "memory": [(small, 2, "off"), (large, 2, "off")],
            "cache": [(small, 2, "cold"), (small, 2, "rerun")]}


def write_pairs(path: Path, n: int, seed: int = 0) -> Path:
    """``n`` distinct synthetic pairs as JSON Lines. make_preference_rows repeats exact pairs at this
    scale (about 5% at 400k, which dedup would drop); a ticket number in each prompt keeps every pair."""
    from dpo_ray.toy import make_preference_rows

    with path.open("w") as f:
        for i, row in enumerate(make_preference_rows(n, seed=seed)):
            f.write(json.dumps({**row, "prompt": f"Ticket {i}: {row['prompt']}"}) + "\n")
    return path


class PeakRss(threading.Thread):
    """Samples this process's RSS every ``interval`` seconds and keeps the largest."""

    def __init__(self, interval: float = 0.05) -> None:
        import psutil

        super().__init__(daemon=True)
        self.process, self.interval, self.peak, self.done = psutil.Process(), interval, 0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement (in a fresh process): read + tokenize (data/stage.py tokenized_rows), then validate
    and count (validate_rows): the two steps of prepare_pairs before it filters the
    kept rows. With a data.cache_dir, tokenized_rows also counts the rows (check_rows), which it
    commits with them, so validate_s is the report alone there. Peak RSS is the driver's own, object store and Ray workers excluded."""
    import ray
    import ray.data

    from dpo_ray.config_load import load_config, resolve_paths
    from dpo_ray.data.stage import tokenized_rows, validate_rows

    sampler = PeakRss()
    sampler.start()
    cpus = spec["num_cpus"]
    # The driver and every Ray process it starts (children inherit the mask) run on `cpus` cores. Ray
    # gets one logical CPU more than it has tokenizer actors: each actor reserves a CPU, and with none
    # left the upstream read task never schedules and the stage hangs (data.tokenize_actors >= CPUs).
    cores = sorted(os.sched_getaffinity(0))
    if cpus > len(cores):
        raise SystemExit(f"{cpus} CPUs asked, this process may use {len(cores)}")
    os.sched_setaffinity(0, set(cores[:cpus]))
    ray.init(address="local", num_cpus=cpus + 1, log_to_driver=False, include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    cfg = resolve_paths(load_config(None, [
        f"data.path={spec['path']}", f"data.tokenize_actors={cpus}", f"data.cache_dir={spec['cache_dir'] or 'null'}",
        f"output_dir={spec['out']}",
    ]))
    baseline = sampler.process.memory_info().rss
    start = time.perf_counter()
    rows, cache_hit, checked = tokenized_rows(cfg)
    tokenized = time.perf_counter()
    counts, _, kept = validate_rows(rows, cfg, Path(cfg.output_dir), checked)
    validated = time.perf_counter()
    sampler.done.set()
    sampler.join()
    ray.shutdown()
    return {
        "rows_read": counts["data/rows_read"], "pairs_kept": kept.rows, "tokenize_cache_hit": cache_hit,
        "tokenize_s": tokenized - start, "validate_s": validated - tokenized,
        "baseline_rss_mib": baseline / MIB, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "sampled_peak_rss_mib": sampler.peak / MIB,
    }


def run_measure(spec: dict[str, Any]) -> dict[str, Any]:
    """``measure(spec)`` in a fresh Python (and so a fresh Ray); its result."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, __file__, "--measure", json.dumps(spec)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"measurement {spec} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    row = {"pairs": result["rows_read"], "cpus": spec["num_cpus"], "ray_num_cpus": spec["num_cpus"] + 1, "cache": spec["label"],
           "tokenize_cache_hit": result["tokenize_cache_hit"],
           "tokenize_s": round(result["tokenize_s"], 2), "tokenize_pairs_per_s": round(result["rows_read"] / result["tokenize_s"]),
           "validate_s": round(result["validate_s"], 2),
           "stage_pairs_per_s": round(result["rows_read"] / (result["tokenize_s"] + result["validate_s"])),
           "baseline_rss_mib": round(result["baseline_rss_mib"]), "peak_rss_mib": round(result["peak_rss_mib"]),
           "sampled_peak_rss_mib": round(result["sampled_peak_rss_mib"]), "pairs_kept": result["pairs_kept"]}
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=100_000, help="the throughput and cache size")
    parser.add_argument("--large", type=int, default=400_000, help="the larger input of the memory comparison")
    parser.add_argument("--smoke", action="store_true", help="2,000 and 8,000 pairs")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where data.json goes (default: bench/results)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one measurement, JSON spec
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(json.loads(args.measure))), flush=True)
        return
    small, large = (2_000, 8_000) if args.smoke else (args.pairs, args.large)
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        work = Path(tmp)
        paths = {n: write_pairs(work / f"pairs-{n}.jsonl", n) for n in (small, large)}

        def spec(n: int, cpus: int, label: str) -> dict[str, Any]:
            return {"path": str(paths[n]), "num_cpus": cpus, "label": label, "out": str(work / f"out-{n}-{cpus}-{label}"),
                    "cache_dir": None if label == "off" else str(work / "tokenized-cache")}

        measured: dict[Measurement, dict[str, Any]] = {}
        sections: dict[str, list[dict[str, Any]]] = {}
        for section, measurements in measurement_plan(args.smoke, small, large).items():
            for m in measurements:
                if m not in measured:  # in plan order: the cold-cache run before its rerun
                    measured[m] = run_measure(spec(*m))
            sections[section] = [measured[m] for m in measurements]
        throughput, memory, cache = sections["throughput"], sections["memory"], sections["cache"]
    growth = memory[1]["peak_rss_mib"] / memory[0]["peak_rss_mib"] - 1
    net = [m["peak_rss_mib"] - m["baseline_rss_mib"] for m in memory]
    result = {
        "command": "python bench/data.py" + (" --smoke" if args.smoke else f" --pairs {small} --large {large}"),
        "notes": (
            "Synthetic pairs from dpo_ray.toy.make_preference_rows, each prompt numbered so no pair repeats (one JSONL "
            "file), tokenized with pipelines/assets/tiny-llama's tokenizer (data.max_length=128). Each row is a fresh "
            "subprocess pinned to `cpus` cores (sched_setaffinity, inherited by every Ray process it starts), "
            "data.tokenize_actors=cpus, ray.init(num_cpus=cpus + 1): the extra logical CPU is for the read task, which "
            "never schedules when the tokenizer actors hold every CPU (the stage then hangs; seen with 1 actor on "
            "num_cpus=1 and 2 actors on num_cpus=2). tokenize_s: pipeline.tokenized_rows "
            "(read, normalise, tokenize, materialize in the object store); validate_s: data.stage.validate_rows (per-row "
            "flags to the driver, drop counts, dedup, data_report.json); the stage (prepare_pairs) then filters the kept "
            "rows. peak_rss_mib: the driver's ru_maxrss (imports and ray.init included); sampled_peak_rss_mib: psutil "
            "every 50 ms; baseline_rss_mib: after imports and ray.init, before the stage. cache cold/rerun: "
            "data.cache_dir set, same key twice; the rerun reads the committed Parquet instead of tokenizing."
        ),
        "throughput": throughput,
        **({"speedup_2_vs_1_cpu": round(throughput[1]["tokenize_pairs_per_s"] / throughput[0]["tokenize_pairs_per_s"], 3)}
           if len(throughput) == 2 else {}),  # the smoke plan measures 2 CPUs only
        "memory": memory,
        "driver_rss_growth": round(growth, 3),
        "driver_rss_growth_above_baseline_mib": round(net[1] - net[0]),
        "driver_rss_flat": growth < MAX_GROWTH,
        "cache": cache,
        "cache_rerun_speedup": round(cache[0]["tokenize_s"] / cache[1]["tokenize_s"], 2),
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / "data.json"
    path.write_text(json.dumps({"machine": machine(), **result}, indent=2) + "\n")
    print(f"driver RSS growth {small} -> {large} pairs: {growth:.1%} ({'<' if growth < MAX_GROWTH else '>='} "
          f"{MAX_GROWTH:.0%}); wrote {path}", flush=True)


if __name__ == "__main__":
    main()
