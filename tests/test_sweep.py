"""Sweeps: the tune settings (pure), and pipelines/sweep.py end to end on local Ray (subprocesses)."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, small_overrides
from dpo_ray.config import ConfigError, load_config
from dpo_ray.tune.settings import load_sweep, sort_rows

SCRIPT = str(REPO / "pipelines" / "sweep.py")
SPACE = {"loss.beta": {"loguniform": [0.01, 1.0]}, "train.learning_rate": {"loguniform": [1e-4, 3e-3]}}


def _sweep_file(tmp_path: Path, **tune: object) -> str:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"tune": {"search_space": SPACE, **tune}}))
    return str(path)


def test_sweep_yaml_and_overrides(tmp_path: Path) -> None:
    base, settings = load_sweep(_sweep_file(tmp_path), ["train.max_steps=7", "tune.num_samples=3",
                                                        "tune.search_space.loss.label_smoothing={choice: [0.0, 0.1]}"])
    assert base.train.max_steps == 7 and settings.num_samples == 3
    assert settings.search_space["loss.label_smoothing"] == {"choice": [0.0, 0.1]}
    assert settings.resolved_mode() == "max" and settings.samples() == 3
    assert load_sweep(str(REPO / "pipelines" / "configs" / "sweep.yaml"), [])[1].searcher == "optuna"


@pytest.mark.parametrize(("overrides", "message"), [
    (["tune.metric=eval/loss"], "tune.metric=eval/loss is not comparable across trials that change loss.beta"),
    (["tune.metric=eval/rewards/margins"], "its scale moves with beta"),
    (["tune.metric=train/loss"], "tune.metric='train/loss': must be a held-out eval/ metric"),
    (["tune.searcher=grid"], "tune.searcher=grid: every tune.search_space entry must be {grid: [...]}"),
    (["tune.searcher=optuna", "tune.search_space.loss.beta={grid: [0.1, 0.2]}"], "tune.searcher=optuna cannot search a {grid"),
    (["tune.search_space.loss.beta={loguniform: [0, 1]}"], "tune.search_space.loss.beta: needs low < high and low > 0"),
    (["tune.search_space.loss.beta={normal: [0, 1]}"], "tune.search_space.loss.beta={'normal': [0, 1]}: expected one of"),
    (["tune.search_space.train.learning_rate={grid: [0.001, -1]}"], "tune.search_space.train.learning_rate: value -1 is not a valid config: train.learning_rate=-1"),
    (["tune.search_space.train.max_stepz={grid: [1]}"], "tune.search_space.train.max_stepz: value 1 is not a valid config: unknown config key 'train.max_stepz'"),
    (["tune.num_samples=0"], "tune.num_samples=0: must be >= 1"),
    (["tune.searchr=grid"], "unknown config key 'tune.searchr'"),
])
def test_bad_sweep_settings_name_the_key(tmp_path: Path, overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_sweep(_sweep_file(tmp_path), overrides)
    assert message in str(err.value)


def test_eval_loss_is_allowed_when_the_loss_is_not_searched(tmp_path: Path) -> None:
    path = tmp_path / "lr.yaml"
    path.write_text(yaml.safe_dump({"tune": {"metric": "eval/loss", "search_space": {"train.learning_rate": {"grid": [1e-4, 1e-3]}}}}))
    _, settings = load_sweep(str(path), [])
    assert settings.resolved_mode() == "min"


def test_sweep_refuses_an_object_store_output_dir(tmp_path: Path) -> None:
    from dpo_ray.tune.driver import run_sweep

    base, settings = load_sweep(_sweep_file(tmp_path), ["output_dir=s3://bucket/sweep"])
    with pytest.raises(ConfigError, match="output_dir s3://bucket/sweep: a sweep keeps its trials"):
        run_sweep(base, settings)  # refused before Ray starts


def test_rows_sort_best_first_with_missing_values_last() -> None:
    rows = [{"m": 0.5}, {"m": float("nan")}, {"m": 0.9}, {}, {"m": 0.7}]
    assert [r.get("m") for r in sort_rows(rows, "m", "max")][:3] == [0.9, 0.7, 0.5]
    assert [r.get("m") for r in sort_rows(rows, "m", "min")][:3] == [0.5, 0.7, 0.9]


def _sweep_args(tiny_model_dir: str, pairs_jsonl: str, out: Path, **extra: object) -> list[str]:
    overrides = small_overrides(tiny_model_dir, pairs_jsonl, str(out), **{
        "train.num_workers": 1, "train.max_steps": 4, "train.eval_every": 2, **extra})
    return ["--config", str(REPO / "pipelines" / "configs" / "sweep.yaml"), *overrides]


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.e2e
def test_sweep_scores_the_reference_once(tiny_model_dir: str, pairs_jsonl: str, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    args = _sweep_args(tiny_model_dir, pairs_jsonl, out, **{"tune.searcher": "random", "tune.num_samples": 4})
    proc = subprocess.run([sys.executable, SCRIPT, *args], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["ref/scoring_runs"] == 1 and summary["trials"] == 4
    rows = _read_csv(out / "trials.csv")
    assert len(rows) == 4 and all(float(r["ref/cache_hit"]) == 1.0 for r in rows)
    values = [float(r["eval/rewards/accuracies"]) for r in rows]
    assert values == sorted(values, reverse=True) and rows[0]["trial_id"] == summary["best_trial"]
    assert summary["best_value"] == values[0]
    assert (out / "best_model" / "model.safetensors").exists() and (out / "heatmap.png").stat().st_size > 0
    best = load_config(out / "best_config.yaml")  # what pipelines/dpo.py --config reruns
    assert best.loss.beta == pytest.approx(summary["best_params"]["loss.beta"])
    assert best.output_dir == str(out / "best_rerun") and not best.overwrite_output_dir
    assert summary["best_trial"] in proc.stdout and "reference scored 1 time(s) for 4 trials" in proc.stdout


@pytest.mark.e2e
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(tiny_model_dir: str, pairs_jsonl: str, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    args = _sweep_args(tiny_model_dir, pairs_jsonl, out, **{
        "tune.searcher": "random", "tune.num_samples": 3, "tune.max_concurrent_trials": 1, "tune.scheduler": "none"})
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
    assert len(rows) == 3 and all(r["finished"] == "True" for r in rows)
    for trial_id, mtime in first.items():  # finished before the interrupt: not run again
        assert (out / "trials" / trial_id / "metrics.json").stat().st_mtime_ns == mtime
    assert json.loads((out / "sweep.json").read_text())["ref/scoring_runs"] == 1
