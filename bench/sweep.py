"""An 8-trial sweep against 8 separate pipelines/dpo.py runs (no shared cache) and 8 TRL DPOTrainer runs.

python bench/sweep.py [--steps 60] [--results-dir DIR]   -> bench/results/sweep.json, then bench/report.py
python bench/sweep.py --smoke --results-dir /tmp/x       -> a 2-config sweep, 4 steps, 400 pairs, every arm
                                                            (TRL if installed) in this process; see arm_configs
python bench/sweep.py --throughput-setting                -> bench/results/sweep_throughput.json: the same grid
                                                            at the throughput bench's model and data, sweep and TRL
Issue 7: k trials should cost k training runs plus ONE reference pass. All three arms train the same
(beta, learning rate) grid on pipelines/configs/sweep.yaml's model, data and settings (1 worker,
batch 32 = 2 x 16, max_length 64, cosine schedule, eval every 20 steps), each from fresh caches.

Issue 19 adds the throughput bench's setting (--throughput-setting): its 4.3M-parameter Llama (hidden
256, 4 layers), its varying-length pairs (bench/reference.py varying_rows, seed 0), max_length 192,
batch 32 in micro-batches of 8, 50 steps, eval at step 0 and the end. Target: eight TRL runs' wall
time >= 1.4x the one sweep's. The separate arm is left out there (it is the sweep's runs without the
shared caches; the default setting measures it).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import itertools
import json
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

from common import REPO, RESULTS, head_pairs, machine, run_in_repo
from reference import varying_rows

sys.path.insert(0, str(REPO))

from dpo_ray.config import Config  # noqa: E402
from dpo_ray.config_load import load_config  # noqa: E402
from dpo_ray.toy import build_tiny_model  # noqa: E402

SWEEP_YAML = REPO / "pipelines" / "configs" / "sweep.yaml"
BETAS = (0.05, 0.1, 0.3, 0.5)
LEARNING_RATES = (3e-4, 1e-3)
SMOKE_BETAS, SMOKE_LEARNING_RATES, SMOKE_STEPS = (0.1, 0.5), (1e-3,), 4
SMOKE_PAIRS = 400  # of sweep.yaml's 3,000: 4 steps of 32 and a ~40-pair eval split; tokenizing, scoring and TRL's map cost less


def timed(cmd: list[str], in_process: bool) -> float:
    """Run ``cmd`` in the repo root (a fresh local Ray, or this process's under --smoke); its wall seconds."""
    return run_in_repo(cmd, in_process=in_process)[1]


def grid_axes(smoke: bool) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The sweep's (betas, learning rates)."""
    return (SMOKE_BETAS, SMOKE_LEARNING_RATES) if smoke else (BETAS, LEARNING_RATES)


def arm_configs(smoke: bool) -> dict[str, list[tuple[float, float]]]:
    """The (beta, learning rate) configs each arm trains. The sweep arm trains the whole grid (its point:
    k trials, one reference pass). --smoke runs the separate and TRL arms on the first config only: a
    further pipelines/dpo.py or bench/trl_dpo.py run is the same call with other numbers."""
    configs = list(itertools.product(*grid_axes(smoke)))
    return {"sweep": configs, "separate": configs[:1] if smoke else configs, "trl": configs[:1] if smoke else configs}


def grid(values: tuple[float, ...]) -> str:
    """A {grid: [...]} override value; YAML floats that read back as floats (1.0e-05, not 1e-05)."""
    return yaml.safe_dump({"grid": list(values)}, default_flow_style=True).strip()


THROUGHPUT_STEPS, THROUGHPUT_TARGET = 50, 1.4  # issue 19: the throughput bench's setting, TRL wall / sweep wall


def sweep_config(work: Path, smoke: bool, throughput: bool = False) -> Path:
    """sweep.yaml, or under --smoke a copy that trains on its first SMOKE_PAIRS pairs, or under
    ``throughput`` a copy on the throughput bench's model and data (module docstring)."""
    if not (smoke or throughput):
        return SWEEP_YAML
    raw = yaml.safe_load(SWEEP_YAML.read_text())
    if throughput:
        rows = varying_rows(int(THROUGHPUT_STEPS * 32 / 0.95) + 16, seed=0)  # as bench/throughput.py builds them
        data = work / "pairs.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        raw["model"]["name_or_path"] = str(build_tiny_model(work / "model", rows, hidden_size=256, num_layers=4, num_heads=4))
        raw["data"].update(path=str(data), max_length=192, eval_fraction=0.05)
        raw["train"].update(max_steps=THROUGHPUT_STEPS, batch_size=32, micro_batch_size=8, eval_every=THROUGHPUT_STEPS)
    else:
        raw["data"]["path"] = head_pairs(REPO / raw["data"]["path"], SMOKE_PAIRS, work / "smoke-pairs.jsonl")
    path = work / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_config(work: Path, sweep_yaml: Path) -> tuple[Path, Config]:
    """The sweep config without its tune: group: the run config every separate run starts from."""
    raw = yaml.safe_load(sweep_yaml.read_text())
    raw.pop("tune")
    path = work / "run.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path, load_config(path)


def sweep_arm(work: Path, sweep_yaml: Path, betas: tuple[float, ...], lrs: tuple[float, ...], steps: int,
              in_process: bool) -> tuple[float, int, list[dict[str, Any]]]:
    """One pipelines/sweep.py grid, no early stopping: (wall s, ref/scoring_runs, a row per trial)."""
    out = work / "sweep"
    wall = timed([sys.executable, "pipelines/sweep.py", "--config", str(sweep_yaml), "tune.searcher=grid",
                  "tune.scheduler=none", "tune.num_samples=1", f"tune.search_space.loss.beta={grid(betas)}",
                  f"tune.search_space.train.learning_rate={grid(lrs)}", f"train.max_steps={steps}", "train.num_workers=1",
                  f"output_dir={out}", f"reference.cache_dir={work / 'sweep-ref-cache'}",
                  f"data.cache_dir={work / 'sweep-data-cache'}"], in_process)
    summary = json.loads((out / "sweep.json").read_text())
    with (out / "trials.csv").open() as f:
        trials = list(csv.DictReader(f))
    rows = [{
        "arm": "sweep", "beta": float(t["loss.beta"]), "learning_rate": float(t["train.learning_rate"]),
        "wall_s": "-", "run_s": round(float(t["perf/total_seconds"]), 1),
        "eval_acc_step0": float(t["initial_eval/rewards/accuracies"]), "eval_acc": float(t["eval/rewards/accuracies"]),
        "eval_loss": round(float(t["eval/loss"]), 4), "reference_scored": float(t["ref/cache_hit"]) == 0.0,
    } for t in trials]
    return wall, summary["ref/scoring_runs"], sorted(rows, key=lambda r: (r["beta"], r["learning_rate"]))


def separate_arm(work: Path, run_yaml: Path, configs: list[tuple[float, float]], steps: int, in_process: bool) -> list[dict[str, Any]]:
    """pipelines/dpo.py once per config, each with its own empty reference and tokenized caches."""
    rows = []
    for i, (beta, lr) in enumerate(configs):
        run = work / f"separate-{i}"
        wall = timed([sys.executable, "pipelines/dpo.py", "--config", str(run_yaml), f"loss.beta={beta}",
                      f"train.learning_rate={lr}", f"train.max_steps={steps}", f"output_dir={run / 'out'}",
                      f"reference.cache_dir={run / 'ref-cache'}", f"data.cache_dir={run / 'data-cache'}"], in_process)
        m = json.loads((run / "out" / "metrics.json").read_text())
        rows.append({
            "arm": "separate", "beta": beta, "learning_rate": lr, "wall_s": round(wall, 1),
            "run_s": round(m["perf/total_seconds"], 1), "eval_acc_step0": m["initial_eval/rewards/accuracies"],
            "eval_acc": m["eval/rewards/accuracies"], "eval_loss": round(m["eval/loss"], 4),
            "reference_scored": m["ref/cache_hit"] == 0.0,
        })
        print(rows[-1], flush=True)
    return rows


def trl_arm(work: Path, cfg: Config, configs: list[tuple[float, float]], steps: int, in_process: bool) -> list[dict[str, Any]]:
    """bench/trl_dpo.py once per config with the run config's settings."""
    t, d = cfg.train, cfg.data
    rows = []
    for i, (beta, lr) in enumerate(configs):
        out = work / f"trl-{i}.json"
        wall = timed([sys.executable, "bench/trl_dpo.py", "--model", cfg.model.name_or_path, "--data", d.path,
                      "--beta", str(beta), "--learning-rate", str(lr), "--max-steps", str(steps),
                      "--batch-size", str(t.batch_size), "--micro-batch-size", str(t.micro_batch_size * t.num_workers),
                      "--max-length", str(d.max_length), "--eval-fraction", str(d.eval_fraction),
                      "--eval-every", str(t.eval_every), "--logging-steps", str(t.logging_steps),
                      "--warmup-ratio", str(t.warmup_ratio), "--lr-scheduler", t.lr_scheduler,
                      "--loss-type", cfg.loss.type[0], "--seed", str(t.seed), "--out", str(out)], in_process)
        m = json.loads(out.read_text())
        rows.append({
            "arm": "trl", "beta": beta, "learning_rate": lr, "wall_s": round(wall, 1), "run_s": round(m["seconds"], 1),
            "eval_acc_step0": m["initial_eval/rewards/accuracies"], "eval_acc": m["eval/rewards/accuracies"],
            "eval_loss": round(m["eval/loss"], 4), "reference_scored": True,
        })
        print(rows[-1], flush=True)
    return rows


def arm_summary(arm: str, total: float, rows: list[dict[str, Any]], scoring: int | str) -> dict[str, Any]:
    accs = [r["eval_acc"] for r in rows]
    return {"arm": arm, "runs": len(rows), "total_wall_s": round(total, 1), "wall_per_run_s": round(total / len(rows), 1),
            "reference_scoring_passes": scoring, "mean_eval_acc": round(sum(accs) / len(accs), 4),
            "min_eval_acc": round(min(accs), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="train.max_steps of every run (default: sweep.yaml's, 60)")
    parser.add_argument("--smoke", action="store_true", help=f"a {len(SMOKE_BETAS) * len(SMOKE_LEARNING_RATES)}-config sweep, {SMOKE_STEPS} steps")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where sweep.json goes (default: bench/results)")
    parser.add_argument("--throughput-setting", action="store_true",
                        help="the throughput bench's model and data, sweep and TRL arms -> sweep_throughput.json")
    args = parser.parse_args()
    if args.throughput_setting:
        throughput_setting(args.results_dir)
        return
    plan = arm_configs(args.smoke)
    with_trl = importlib.util.find_spec("trl") is not None
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        work = Path(tmp)
        sweep_yaml = sweep_config(work, args.smoke)
        run_yaml, cfg = run_config(work, sweep_yaml)
        steps = args.steps or (SMOKE_STEPS if args.smoke else cfg.train.max_steps)
        sweep_wall, scoring_runs, sweep_rows = sweep_arm(work, sweep_yaml, *grid_axes(args.smoke), steps, args.smoke)
        print({"sweep_wall_s": round(sweep_wall, 1), "ref/scoring_runs": scoring_runs}, flush=True)
        separate_rows = separate_arm(work, run_yaml, plan["separate"], steps, args.smoke)
        trl_rows = trl_arm(work, cfg, plan["trl"], steps, args.smoke) if with_trl else []
    separate_wall = sum(r["wall_s"] for r in separate_rows)
    arms = [arm_summary("sweep", sweep_wall, sweep_rows, scoring_runs),
            arm_summary("separate", separate_wall, separate_rows, sum(r["reference_scored"] for r in separate_rows))]
    result: dict[str, Any] = {
        "command": "python bench/sweep.py" + (" --smoke" if args.smoke else "") + (f" --steps {args.steps}" if args.steps else ""),
        "notes": (
            f"{len(plan['sweep'])} configs (beta x learning rate grid{'; the first in the separate and trl arms' if args.smoke else ''}), {steps} steps each, pipelines/configs/sweep.yaml settings "
            f"(tiny Llama, {cfg.data.path.rsplit('/', 1)[-1]}, train.num_workers={cfg.train.num_workers}, batch "
            f"{cfg.train.batch_size} = {cfg.train.gradient_accumulation_steps()} x {cfg.train.micro_batch_size}, max_length "
            f"{cfg.data.max_length}, {cfg.train.lr_scheduler} schedule, warmup {cfg.train.warmup_ratio}, eval every "
            f"{cfg.train.eval_every} steps and at step 0). sweep: one pipelines/sweep.py, tune.searcher=grid, "
            "tune.scheduler=none (every trial runs in full), fresh reference and tokenized caches; max_concurrent_trials "
            "unset, so as many 1-worker trials run side by side as the machine has CPUs. separate: one pipelines/dpo.py per "
            "config, one after another, each with its own empty caches (each starts Ray, tokenizes and scores the reference). "
            "trl: bench/trl_dpo.py per config (TRL DPOTrainer, CPU, torch's default thread count, reference model scored "
            "on every batch as TRL does by default, the same dedup and prompt-hash eval split); TRL tokenizes "
            "prompt+completion as one text and dpo_ray tokenizes them apart, yet the ids agree on all 3,000 quickstart "
            "pairs and none reaches max_length (checked once by hand); its data order differs (seeded sampler vs dpo_ray's "
            "seeded hash order), and its eval metrics are means "
            "of per-batch means (the eval batch divides the eval set where it can, so equal to dpo_ray's per-pair mean). "
            "wall_s: the subprocess, Python start included; run_s: measured inside the run (a sweep trial's pipeline.run, "
            "data and reference stages excluded, as its trials share them). eval_acc: held-out eval/rewards/accuracies at "
            "the last step (strict: chosen reward > rejected)."
        ),
        "arms": arms,
        "runs": sweep_rows + separate_rows + trl_rows,
        "separate_over_sweep": round(separate_wall / sweep_wall, 3),
    }
    if with_trl:
        trl_wall = sum(r["wall_s"] for r in trl_rows)
        arms.append(arm_summary("trl", trl_wall, trl_rows, f"every batch ({len(trl_rows)} runs, no cache)"))
        result["trl_over_sweep"] = round(trl_wall / sweep_wall, 3)
        result["trl_version"] = version("trl")
    else:
        result["trl_skipped"] = "trl is not installed (pip install -e .[bench]); the TRL arm did not run"
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / "sweep.json"
    path.write_text(json.dumps({"machine": machine(), **result}, indent=2) + "\n")
    print(json.dumps(arms, indent=1), f"\nwrote {path}", flush=True)


def throughput_setting(results_dir: Path) -> None:
    """Issue 19's second sweep target: the grid at the throughput bench's model and data, the sweep
    against eight TRL runs (module docstring) -> sweep_throughput.json."""
    with tempfile.TemporaryDirectory(prefix="bench-sweep-tp-") as tmp:
        work = Path(tmp)
        sweep_yaml = sweep_config(work, smoke=False, throughput=True)
        _, cfg = run_config(work, sweep_yaml)
        configs = arm_configs(False)["sweep"]
        sweep_wall, scoring_runs, sweep_rows = sweep_arm(work, sweep_yaml, BETAS, LEARNING_RATES, THROUGHPUT_STEPS, False)
        print({"sweep_wall_s": round(sweep_wall, 1), "ref/scoring_runs": scoring_runs}, flush=True)
        trl_rows = trl_arm(work, cfg, configs, THROUGHPUT_STEPS, False)
    trl_wall = sum(r["wall_s"] for r in trl_rows)
    result = {"command": "python bench/sweep.py --throughput-setting",
              "notes": (f"{len(configs)} configs (beta x learning rate grid), {THROUGHPUT_STEPS} steps each, at the throughput "
                        "bench's model and data: " + __doc__.split("throughput bench's setting (--throughput-setting): ", 1)[1]
                        .split(". Target", 1)[0].replace("\n", " ") + "; otherwise sweep.yaml's settings (1 worker a trial, "
                        "cosine schedule, warmup 0.1) and the default setting's arms (notes of sweep.json)."),
              "arms": [arm_summary("sweep", sweep_wall, sweep_rows, scoring_runs),
                       arm_summary("trl", trl_wall, trl_rows, f"every batch ({len(trl_rows)} runs, no cache)")],
              "runs": sweep_rows + trl_rows, "trl_over_sweep": round(trl_wall / sweep_wall, 3), "trl_version": version("trl")}
    result["target_met"] = result["trl_over_sweep"] >= THROUGHPUT_TARGET
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / "sweep_throughput.json"
    path.write_text(json.dumps({"machine": machine(), **result}, indent=2) + "\n")
    print(json.dumps(result["arms"], indent=1), f"\nwrote {path}", flush=True)


if __name__ == "__main__":
    main()
