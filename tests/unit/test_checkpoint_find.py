"""Finding a run's checkpoints on disk (train/checkpoint.py): what resume and Ctrl+C's message use."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dpo_ray.config import ConfigError
from dpo_ray.train.checkpoint import checkpoint_step, find_checkpoint, latest_checkpoint

pytestmark = pytest.mark.unit


def _checkpoint(run: Path, name: str, step: int | None, mtime: float) -> Path:
    path = run / name
    path.mkdir(parents=True)
    if step is not None:
        (path / "run_state.json").write_text(json.dumps({"step": step}))
        os.utime(path / "run_state.json", (mtime, mtime))
    return path


def test_newest_registered_training_checkpoint_is_found(tmp_path: Path) -> None:
    run = tmp_path / "ray" / "train-1"
    _checkpoint(run, "checkpoint_a", 2, 100)
    newest = _checkpoint(run, "checkpoint_b", 4, 200)
    _checkpoint(run, "checkpoint_c", None, 300)  # a finished run's model: no training state
    assert latest_checkpoint(tmp_path) == newest and checkpoint_step(newest) == 4
    assert find_checkpoint(str(tmp_path)) == str(newest)
    assert find_checkpoint(str(newest)) == str(newest)


def test_unregistered_and_damaged_records_are_not_trusted(tmp_path: Path) -> None:
    run = tmp_path / "ray" / "train-1"
    kept = _checkpoint(run, "checkpoint_a", 2, 100)
    _checkpoint(run, "checkpoint_b", 4, 200)  # written when stopped, never registered
    (run / "checkpoint_manager_snapshot.json").write_text(json.dumps(
        {"checkpoint_results": [{"checkpoint_dir_name": "checkpoint_a"}]}))
    assert latest_checkpoint(tmp_path) == kept
    (run / "checkpoint_manager_snapshot.json").write_text('{"checkpoint_res')  # cut short by a kill
    assert latest_checkpoint(tmp_path) is None
    with pytest.raises(ConfigError, match="no checkpoint found"):
        find_checkpoint(str(tmp_path))


def test_checkpoint_step_of_an_unreadable_state_is_zero(tmp_path: Path) -> None:
    assert checkpoint_step(tmp_path) == 0
    (tmp_path / "run_state.json").write_text("{not json")
    assert checkpoint_step(tmp_path) == 0
