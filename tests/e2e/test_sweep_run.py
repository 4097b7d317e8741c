"""pipelines/sweep.py end to end on local Ray (subprocesses); the settings alone: tests/unit/test_sweep.py."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _wandb import offline_runs, read_run
from conftest import REPO, small_overrides
from dpo_ray.config_load import load_config

SCRIPT = str(REPO / "pipelines" / "sweep.py")


def _sweep_args(tiny_model_dir: str, pairs_jsonl: str, out: Path, **extra: object) -> list[str]:
    overrides = small_overrides(tiny_model_dir, pairs_jsonl, str(out), **{
        "train.num_workers": 1, "train.max_steps": 4, "train.eval_every": 2, **extra})
    return ["--config", str(REPO / "pipelines" / "configs" / "sweep.yaml"), *overrides]


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.e2e
@pytest.mark.slow
def test_sweep_scores_the_reference_once(tiny_model_dir: str, pairs_jsonl: str, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    args = _sweep_args(tiny_model_dir, pairs_jsonl, out, **{"tune.searcher": "random", "tune.num_samples": 2,
                                                            "train.report_to": "[wandb]"})
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, SCRIPT, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    runs = {trial.name: read_run(d) for trial in sorted((out / "trials").iterdir()) for d in offline_runs(trial)}
    assert len(runs) == 2 and len({r["group"] for r in runs.values()}) == 1  # one W&B group
    assert next(iter(runs.values()))["group"].startswith("sweep-")
    # ASHA may stop a trial early: Tune ends its process, and W&B may keep none of its history (README)
    finished = {t for t in runs if (out / "trials" / t / "metrics.json").exists()}
    assert finished and all(runs[t]["exit_code"] == 0 and runs[t]["history"] for t in finished), {
        t: (r["exit_code"], sorted(r["history"])) for t, r in runs.items()}
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["ref/scoring_runs"] == 1 and summary["trials"] == 2
    rows = _read_csv(out / "trials.csv")
    assert len(rows) == 2 and all(float(r["ref/cache_hit"]) == 1.0 for r in rows)
    values = [float(r["eval/rewards/accuracies"]) for r in rows]
    assert values == sorted(values, reverse=True) and rows[0]["trial_id"] == summary["best_trial"]
    assert summary["best_value"] == values[0]
    assert (out / "best_model" / "model.safetensors").exists() and (out / "heatmap.png").stat().st_size > 0
    best = load_config(out / "best_config.yaml")  # what pipelines/dpo.py --config reruns
    assert best.loss.beta == pytest.approx(summary["best_params"]["loss.beta"])
    assert best.output_dir == str(out / "best_rerun") and not best.overwrite_output_dir
    assert summary["best_trial"] in proc.stdout and "reference scored 1 time(s) for 2 trials" in proc.stdout


@pytest.mark.e2e
@pytest.mark.slow
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(tiny_model_dir: str, pairs_jsonl: str, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    args = _sweep_args(tiny_model_dir, pairs_jsonl, out, **{
        "tune.searcher": "random", "tune.num_samples": 2, "tune.max_concurrent_trials": 1, "tune.scheduler": "none"})
    proc = subprocess.Popen([sys.executable, SCRIPT, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while not list(out.glob("trials/*/metrics.json")):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "no trial finished in 600 s"
        time.sleep(1)
    proc.send_signal(signal.SIGINT)  # Ctrl+C after the first trial
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-3000:]
    assert f"continue it with: python pipelines/sweep.py --resume {out}" in stderr
    assert not (out / "sweep.json").exists() and not (out / "best_model").exists()
    first = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("trials/*/metrics.json")}

    again = subprocess.run([sys.executable, SCRIPT, "--resume", str(out)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    rows = _read_csv(out / "trials.csv")
    assert len(rows) == 2 and all(r["finished"] == "True" for r in rows)
    for trial_id, mtime in first.items():  # finished before the interrupt: not run again
        assert (out / "trials" / trial_id / "metrics.json").stat().st_mtime_ns == mtime
    assert json.loads((out / "sweep.json").read_text())["ref/scoring_runs"] == 1
