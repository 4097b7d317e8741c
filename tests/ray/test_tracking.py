"""Live tracking (dpo_ray.tracking): TensorBoard scalars visible at each report, MLflow runs, W&B runs."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from conftest import small_overrides
from dpo_ray.config_load import load_config
from dpo_ray.tracking import LiveTracking, finish_mlflow, numeric, read_progress, start_mlflow


def read_scalars(log_dir: Path) -> dict[tuple[str, int], float]:
    """Every scalar in the TensorBoard event files under ``log_dir``: (tag, step) -> value."""
    from tensorboardX.proto.event_pb2 import Event

    scalars = {}
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars[(value.tag, event.step)] = value.simple_value
    return scalars


def test_tensorboard_scalars_are_on_disk_at_each_report(tmp_path: Path) -> None:
    tracker = LiveTracking(str(tmp_path), tensorboard=True, mlflow_run=None)
    tracker.after_report(None, [{"step": 1.0, "train/loss": 0.69, "placement/worker_nodes": ["a"]}], None)
    # Before the run ends (no close): what `tensorboard --logdir` would read now.
    assert read_scalars(tmp_path / "tensorboard") == {("train/loss", 1): pytest.approx(0.69)}
    tracker.after_report(None, [{"step": 2.0, "train/loss": 0.5, "eval/loss": 0.6}], None)
    assert read_scalars(tmp_path / "tensorboard")[("eval/loss", 2)] == pytest.approx(0.6)
    assert read_progress(tmp_path) == 2  # what an interrupted run names as the step reached
    tracker.after_report(None, [{"stop_reason": "max_steps", "train/steps": 2.0}], None)  # the final report closes it
    assert tracker._writer is None and len(read_scalars(tmp_path / "tensorboard")) == 3


def test_mlflow_run_gets_params_metrics_and_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "unit")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a local file store: no server, no database
    cfg = load_config(None, ["train.report_to=[mlflow]", "loss.beta=0.25", f"output_dir={tmp_path / 'run'}"])
    run = start_mlflow(cfg, "unit-run")
    tracker = LiveTracking(str(tmp_path / "run"), tensorboard=False, mlflow_run=run)
    tracker.after_report(None, [{"step": 1.0, "train/loss": 0.69}], None)
    tracker.after_report(None, [{"step": 3.0, "train/loss": 0.4}], None)
    client = MlflowClient(uri)
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "train/loss")] == [(1, 0.69), (3, 0.4)]
    assert client.get_run(run.run_id).data.params["loss.beta"] == "0.25"
    assert client.get_run(run.run_id).info.status == "RUNNING"
    finish_mlflow(run, {"train/steps": 3.0, "eval/loss": 0.5, "model_dir": "x"}, failed=False)
    done = client.get_run(run.run_id)
    assert done.info.status == "FINISHED" and done.data.metrics["final/eval/loss"] == 0.5
    failed = start_mlflow(cfg, "unit-failed")
    finish_mlflow(failed, None, failed=True)
    assert client.get_run(failed.run_id).info.status == "FAILED"
    assert not (tmp_path / "run" / "tensorboard").exists()


@pytest.mark.ray
def test_wandb_offline_run_holds_the_history_step_for_step(tiny_model_dir: str, pairs_jsonl: str, tmp_path: Path,
                                                             shared_caches: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from _wandb import offline_runs, read_run

    from dpo_ray.run import run

    key = "fakeWANDBkey0123456789abcdef0123456789ab"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", key)
    monkeypatch.setenv("WANDB_PROJECT", "unit-project")
    out = tmp_path / "run"
    try:
        summary = run(load_config(None, small_overrides(tiny_model_dir, pairs_jsonl, str(out), caches=shared_caches,
                                                        **{"train.report_to": "[wandb]", "train.num_workers": 1})))
    finally:
        import ray

        ray.shutdown()  # run() started it: the next module starts its own
    (run_dir,) = offline_runs(out)
    logged = read_run(run_dir, wait_for_exit=30)
    history = [json.loads(line) for line in (out / "metrics_history.jsonl").read_text().splitlines()]
    assert sorted(logged["history"]) == [int(row["step"]) for row in history] == [0, 1, 2, 3, 4]
    for row in history:  # every logged step's metrics, as metrics_history.jsonl holds them
        values = numeric(row)
        assert {k: logged["history"][int(row["step"])][k] for k in values} == pytest.approx(values)
    assert logged["config"]["loss"]["beta"] == 0.1 and logged["config"]["train"]["report_to"] == ["wandb"]
    assert logged["summary"]["final/eval/loss"] == pytest.approx(summary["eval/loss"])
    assert logged["history"][4]["curves/_type"] == "image-file" and logged["exit_code"] == 0
    assert summary["wandb_run_id"] in run_dir.name and logged["name"] == "run"
    assert not [p for p in out.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]  # the key is written nowhere


def test_wandb_run_of_a_failed_training_ends_with_exit_code_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from _wandb import offline_runs, read_run

    from dpo_ray.tracking import finish_wandb, start_wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = load_config(None, ["train.report_to=[wandb]", f"output_dir={tmp_path / 'run'}"])
    assert start_wandb(load_config(None, [f"output_dir={tmp_path / 'run'}"]), "off", tmp_path, None) is None  # not asked for
    run = start_wandb(cfg, "unit-failed", tmp_path, "unit-group")
    run.log({"train/loss": 0.69}, step=1)
    finish_wandb(run, None, None, failed=True)  # what run() calls when training raised
    (run_dir,) = offline_runs(tmp_path)
    logged = read_run(run_dir, wait_for_exit=30)
    assert logged["exit_code"] == 1 and logged["group"] == "unit-group" and logged["history"][1]["train/loss"] == 0.69
