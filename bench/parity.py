"""Learning parity with TRL: the same DPO run in dpo_ray and in TRL's DPOTrainer, sigmoid and ipo, 3 seeds.

python bench/parity.py [--steps 30 --seeds 0,1,2]   -> bench/results/parity.json
python bench/parity.py --smoke --results-dir /tmp/x  -> 1 seed, 4 steps, sigmoid only, the first 400 pairs,
                                                       TRL in this process

Issue 9: after the same number of steps the held-out rewards/accuracies, reward margins and eval loss
must agree within noise. Both arms train the quickstart model on the quickstart pairs with the same
settings (pipelines/configs/quickstart.yaml: batch 32, max_length 64, lr 1e-3, cosine, warmup 0.1,
beta 0.1, fp32) and hold out the very same pairs (dpo_ray's prompt-hash split, exact duplicates
dropped); the seed sets each one's data order, and dpo_ray's batches are not grouped by length
(train.group_by_length=false), so both draw batches the same way. dpo_ray: pipeline.run in this process (one local Ray;
the tokenized and reference caches filled by the first run serve the rest), 2 workers x micro-batch 16.
TRL: bench/trl_dpo.py, one process, micro-batch 16 x 2 accumulation steps. "Agree" for a metric: the
difference of the means is within 2 standard errors of that difference (sqrt(s1^2/n + s2^2/n), n seeds)
or within 0.01 absolute. At step 0 the policy is the reference, so loss (ln 2) and margins (0) must be
equal; step-0 accuracy is not compared: every reward is 0 up to float noise and the strict ">" counts
that noise (dpo_ray's reference log-probs come from the reference pass's batches, whose padding and
matmul blocking differ in the last bits from the policy's; TRL scores both in one batch and gets 0).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import ray

from common import REPO, RESULTS, head_pairs, run_in_repo, scratch_dir, write_result

sys.path.insert(0, str(REPO))

from dpo_ray.config_load import load_config  # noqa: E402
from dpo_ray.run import run  # noqa: E402

METRICS = ("eval/rewards/accuracies", "eval/rewards/margins", "eval/loss")
LOSSES = {"sigmoid": [], "ipo": []}  # loss -> extra dpo_ray overrides (none: both use beta 0.1)
ABS_TOLERANCE = 0.01
QUICKSTART = REPO / "pipelines" / "configs" / "quickstart.yaml"
SMOKE_PAIRS = 400  # of the quickstart's 3,000: 4 steps of 32 and a ~40-pair eval split; tokenizing, scoring and TRL's map cost less


def dpo_ray_run(loss: str, seed: int, steps: int, work: Path, data: str | None) -> dict[str, float]:
    """pipeline.run on quickstart.yaml (its pairs, or ``data``)."""
    out = work / f"dpo_ray-{loss}-{seed}"
    cfg = load_config(str(QUICKSTART), [
        *([f"data.path={data}"] if data else []),
        f"loss.type={loss}", f"train.seed={seed}", f"train.max_steps={steps}", f"train.eval_every={steps}",
        "train.group_by_length=false",  # batches drawn as TRL draws them, not of similar lengths
        "train.report_to=[]", f"output_dir={out}", f"data.cache_dir={work / 'cache' / 'tokenized'}",
        f"reference.cache_dir={work / 'cache' / 'reference'}",
    ])
    m = run(cfg)
    return {**{k: m[k] for k in METRICS}, **{f"initial_{k}": m[f"initial_{k}"] for k in METRICS}}


def trl_run(loss: str, seed: int, steps: int, work: Path, data: str | None, in_process: bool) -> dict[str, float]:
    """bench/trl_dpo.py (its defaults are the quickstart's model and pairs, or ``data``), a subprocess or ``in_process``."""
    out = work / f"trl-{loss}-{seed}.json"
    run_in_repo([sys.executable, "bench/trl_dpo.py", "--beta", "0.1", "--learning-rate", "1e-3", "--max-steps", str(steps),
                 "--eval-every", str(steps), "--logging-steps", str(steps), "--loss-type", loss, "--seed", str(seed),
                 *(["--data", data] if data else []), "--out", str(out)], in_process=in_process)
    m = json.loads(out.read_text())
    return {**{k: m[k] for k in METRICS}, **{f"initial_{k}": m[f"initial_{k}"] for k in METRICS}}


def compare(ours: list[float], theirs: list[float]) -> dict[str, Any]:
    """Means, spreads (sample std over seeds) and whether the gap is within noise."""
    n = len(ours)
    sd = (lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0)
    gap = statistics.fmean(ours) - statistics.fmean(theirs)
    noise = 2 * math.sqrt((sd(ours) ** 2 + sd(theirs) ** 2) / n)
    return {"dpo_ray_mean": statistics.fmean(ours), "dpo_ray_std": sd(ours), "trl_mean": statistics.fmean(theirs),
            "trl_std": sd(theirs), "gap": gap, "two_standard_errors": noise,
            "agree": abs(gap) <= max(noise, ABS_TOLERANCE)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--smoke", action="store_true", help="1 seed, 4 steps, sigmoid only")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    if importlib.util.find_spec("trl") is None:
        raise SystemExit("bench/parity.py compares with TRL, which is not installed: pip install -e \".[bench]\"")
    seeds = [int(s) for s in args.seeds.split(",")]
    losses = list(LOSSES)
    if args.smoke:
        args.steps, seeds, losses = 4, [0], ["sigmoid"]
    ray.init(address="local", num_cpus=2, log_to_driver=False, include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    work = scratch_dir("bench-parity-")
    quickstart_pairs = REPO / load_config(str(QUICKSTART), []).data.path
    data = head_pairs(quickstart_pairs, SMOKE_PAIRS, work / "smoke-pairs.jsonl") if args.smoke else None
    runs, table = [], []
    for loss in losses:
        per_arm: dict[str, list[dict[str, float]]] = {"dpo_ray": [], "trl": []}
        for seed in seeds:
            for arm in ("dpo_ray", "trl"):
                m = (dpo_ray_run(loss, seed, args.steps, work, data) if arm == "dpo_ray"
                     else trl_run(loss, seed, args.steps, work, data, in_process=args.smoke))
                per_arm[arm].append(m)
                runs.append({"loss": loss, "seed": seed, "arm": arm, **{k: round(v, 4) for k, v in m.items()}})
                print(runs[-1], flush=True)
        for metric in METRICS:
            row = compare([m[metric] for m in per_arm["dpo_ray"]], [m[metric] for m in per_arm["trl"]])
            initial = compare([m[f"initial_{metric}"] for m in per_arm["dpo_ray"]], [m[f"initial_{metric}"] for m in per_arm["trl"]])
            table.append({"loss": loss, "metric": metric, **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()},
                          "step0_dpo_ray": round(initial["dpo_ray_mean"], 4), "step0_trl": round(initial["trl_mean"], 4)})
            print(table[-1], flush=True)
    step0_equal = all(abs(r["step0_dpo_ray"] - r["step0_trl"]) <= 1e-3 for r in table if r["metric"] != "eval/rewards/accuracies")
    path = write_result("parity", {
        "command": "python bench/parity.py " + ("--smoke" if args.smoke else f"--steps {args.steps} --seeds {args.seeds}"),
        "notes": (f"{args.steps} steps, seeds {seeds}. Issue 9: " + __doc__.split("Issue 9: ", 1)[1].replace("\n", " ").strip()),
        "comparison": table, "runs": runs, "step0_equal": step0_equal,
        "all_agree": step0_equal and all(r["agree"] for r in table),
    }, args.results_dir)
    print(f"all_agree={step0_equal and all(r['agree'] for r in table)} wrote {path}")


if __name__ == "__main__":
    main()
