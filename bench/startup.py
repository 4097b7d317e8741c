"""Where the seconds to the first step go (issue 19): a timeline of one run, cold and warm, against TRL.

python bench/startup.py --label after [--steps 3]   -> bench/results/startup.json (each label's runs kept)
python bench/startup.py --smoke --results-dir /tmp/x -> a 2-layer, 64-wide model, 2 steps

The throughput bench's model and data (Llama from config, 4.3M parameters, 689 pairs of widely varying
length, max_length 192, batch 32 in micro-batches of 8), run as a user runs it: `python pipelines/dpo.py`
in a fresh process with the defaults (auto resources), first with empty caches (cold), then again on
the caches it filled (warm: a rerun or a sweep trial). TRL: bench/trl_dpo.py, default and
precompute_ref_log_probs=True, one process with 2 torch threads. Time to first step: from the launch
of the subprocess to the end of optimizer step 1, both sides. The phases come from the run's own
``startup/*`` marks in metrics.json (Unix times: driver and rank 0), each phase the time from the
previous mark. Targets (issue 19): warm <= 1.5x and cold <= 3x TRL default's time to its first step.
Ray floor: bench/ray_floor.py in a fresh process (Ray Train imported, ray.init(), a TorchTrainer of 2
workers whose loop does nothing): the launch to its loop, what any Ray Train pipeline pays here before
its own code runs in a worker (no model, data or DeepSpeed); floor_vs_trl is that over TRL default's
whole time to its first step.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from common import REPO, RESULTS, machine, run_in_repo, scratch_dir, write_result
from reference import varying_rows

sys.path.insert(0, str(REPO))

from dpo_ray.toy import build_tiny_model  # noqa: E402

TARGET_WARM, TARGET_COLD = 1.5, 3.0
# (phase, the mark that ends it): each phase runs from the previous mark (the launch for the first)
PHASES = [
    ("imports", "startup/run_called"),  # python start, imports, config, preflight
    ("ray_init", "startup/ray_ready"),
    ("data", "startup/data_done"),  # read, validate, tokenize (a hit: the cache read)
    ("reference", "startup/reference_done"),
    ("split", "startup/split_done"),  # train/eval split and the seeded order
    ("trainer", "startup/fit_called"),  # TorchTrainer built, outputs opened
    ("worker_start", "startup/worker_loop_entered"),  # Train controller, worker actors, process group, the loop's imports
    ("deepspeed_import", "startup/worker_deepspeed_imported"),
    ("model_load", "startup/worker_model_loaded"),  # all_gather of the node ids, tokenizer, model
    ("engine_init", "startup/worker_engine_ready"),  # deepspeed.initialize, restore
    ("step0_eval", "startup/worker_step0_eval_done"),  # dataset shards, step-0 eval
    ("step1", "perf/first_step_time"),
]


def timeline(metrics: dict[str, Any], launched: float) -> dict[str, float]:
    """Seconds per phase of PHASES from a run's metrics.json, the launch at ``launched`` (Unix time)."""
    phases, previous = {}, launched
    for name, mark in PHASES:
        phases[name] = round(metrics[mark] - previous, 2)
        previous = metrics[mark]
    return phases


def dpo_ray_run(setup: dict[str, Any], work: Path, warm: bool) -> dict[str, Any]:
    out = work / f"dpo_ray-{'warm' if warm else 'cold'}"
    cache = work / "dpo_ray-cache"  # empty for the cold run, which fills it
    launched, wall = run_in_repo([sys.executable, "pipelines/dpo.py", f"model.name_or_path={setup['model']}",
                                  f"data.path={setup['data']}", "data.max_length=192", "data.eval_fraction=0.05",
                                  f"train.max_steps={setup['steps']}", "train.batch_size=32", "train.micro_batch_size=8",
                                  f"train.eval_every={setup['steps']}", "train.report_to=[]",
                                  f"data.cache_dir={cache}/tokenized", f"reference.cache_dir={cache}/reference",
                                  f"output_dir={out}"], in_process=setup["in_process"])
    m = json.loads((out / "metrics.json").read_text())
    phases = timeline(m, launched)
    return {"arm": f"dpo_ray {'warm' if warm else 'cold'}", "seconds_to_first_step": round(m["perf/first_step_time"] - launched, 2),
            "wall_seconds": round(wall, 2), "phases": phases, "auto": m.get("auto", "")}


def warm_median(setup: dict[str, Any], work: Path, repeats: int) -> dict[str, Any]:
    """``repeats`` warm runs (run to run, the same run varies by seconds here); the median one, with every time."""
    runs = sorted((dpo_ray_run(setup, work, warm=True) for _ in range(repeats)), key=lambda r: r["seconds_to_first_step"])
    return {**runs[len(runs) // 2], "every_seconds_to_first_step": [r["seconds_to_first_step"] for r in runs]}


def trl_run(setup: dict[str, Any], work: Path, precompute: bool) -> dict[str, Any]:
    out = work / f"trl-{'pre' if precompute else 'default'}.json"
    steps = str(setup["steps"])
    launched, wall = run_in_repo([sys.executable, "bench/trl_dpo.py", "--model", setup["model"], "--data", setup["data"],
                                  "--max-length", "192", "--eval-fraction", "0.05", "--beta", "0.1", "--learning-rate", "1e-4",
                                  "--max-steps", steps, "--batch-size", "32", "--micro-batch-size", "8", "--eval-every", steps,
                                  "--logging-steps", steps, "--out", str(out), "--threads", "2",
                                  *(["--precompute-ref"] if precompute else [])], in_process=setup["in_process"])
    m = json.loads(out.read_text())
    return {"arm": "TRL precompute_ref_log_probs=True" if precompute else "TRL default",
            "seconds_to_first_step": round(m["first_step_time"] - launched, 2), "wall_seconds": round(wall, 2)}


def ray_floor_run(setup: dict[str, Any], work: Path) -> dict[str, Any]:
    """bench/ray_floor.py: python start and Ray imports, ray.init, the worker group up to its loop."""
    out = work / "ray-floor.json"
    launched, wall = run_in_repo([sys.executable, "bench/ray_floor.py", "--out", str(out), "--workers", "2"],
                                 in_process=setup["in_process"])
    m = json.loads(out.read_text())
    return {"arm": "Ray floor (no-op TorchTrainer, 2 workers)", "seconds_to_loop": round(m["loop_entered"] - launched, 2),
            "imports": round(m["imported"] - launched, 2), "ray_init": round(m["ray_ready"] - m["imported"], 2),
            "worker_start": round(m["loop_entered"] - m["fit_called"], 2), "wall_seconds": round(wall, 2)}


def _commit() -> str:
    """The checkout measured: its commit, and whether it had changes beside it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True).stdout
    return head + (" with uncommitted changes" if dirty.strip() else "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="after", help="the results file keeps each label's runs (before, after, ...)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warm-repeats", type=int, default=3, help="warm runs; the one with the median time is reported")
    parser.add_argument("--smoke", action="store_true", help="a 2-layer, 64-wide model, 2 steps, in this process")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    work = scratch_dir("bench-startup-")
    hidden, layers, steps = (64, 2, 2) if args.smoke else (256, 4, args.steps)
    rows = varying_rows(689, seed=0)  # the throughput bench's pairs
    model = build_tiny_model(work / "model", rows, hidden_size=hidden, num_layers=layers, num_heads=max(hidden // 64, 1))
    data = work / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    setup = {"model": str(model), "data": str(data), "steps": steps, "in_process": args.smoke}
    runs = [dpo_ray_run(setup, work, warm=False), warm_median(setup, work, 1 if args.smoke else args.warm_repeats)]
    if not args.smoke:  # in one process TRL's start would be free: its figure means nothing there
        runs += [trl_run(setup, work, precompute=False), trl_run(setup, work, precompute=True)]
    floor = ray_floor_run(setup, work)
    print(floor, flush=True)
    for r in runs:
        print(r, flush=True)
    by = {r["arm"]: r["seconds_to_first_step"] for r in runs}
    result: dict[str, Any] = {"runs": runs, "ray_floor": floor}
    if "TRL default" in by:
        result.update(warm_vs_trl=round(by["dpo_ray warm"] / by["TRL default"], 3),
                      cold_vs_trl=round(by["dpo_ray cold"] / by["TRL default"], 3),
                      floor_vs_trl=round(floor["seconds_to_loop"] / by["TRL default"], 3))
        result["targets_met"] = result["warm_vs_trl"] <= TARGET_WARM and result["cold_vs_trl"] <= TARGET_COLD
    path = args.results_dir / "startup.json"
    labels = json.loads(path.read_text()).get("labels", {}) if path.exists() and not args.smoke else {}
    labels[args.label] = {"machine": machine(), "code": _commit(), "command": "python bench/startup.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                          **result}
    notes = __doc__.split("\n\n", 2)[2].strip().replace("\n", " ") + " Phases: " + "; ".join(
        f"{name} ends at {mark}" for name, mark in PHASES) + "."
    table = [{"label": label, "arm": r["arm"], "seconds_to_first_step": r["seconds_to_first_step"], **r.get("phases", {})}
             for label, entry in labels.items() for r in entry["runs"]]
    ratios = [{"label": label, **{k: v for k, v in entry.items() if k in ("warm_vs_trl", "cold_vs_trl", "floor_vs_trl", "targets_met")},
               "measured": entry["machine"]["date"]} for label, entry in labels.items()]
    floors = [{"label": label, **entry["ray_floor"]} for label, entry in labels.items() if "ray_floor" in entry]
    written = write_result("startup", {"command": labels[args.label]["command"], "notes": notes, "timeline": table, "ratios": ratios,
                                       "ray_floor": floors, "labels": labels}, args.results_dir)
    print({k: v for k, v in result.items() if k != "runs"}, f"wrote {written}")


if __name__ == "__main__":
    main()
