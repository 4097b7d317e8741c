"""Training checkpoints: what one holds, writing and restoring it on a worker, finding one on disk.

A checkpoint is one Ray Train checkpoint folder: every rank's DeepSpeed shards (model, optimizer,
scheduler) under deepspeed/, each rank's torch RNG (rng_rank<r>.pt) and rank 0's run_state.json
(RunState: the step, which with dpo_ray.train.order fixes the data position, and the counters).

Ray and torch are imported inside save_checkpoint and restore (worker side): the driver's
preflight, which runs before Ray and torch load, uses find_checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dpo_ray.config import ConfigError


@dataclass
class RunState:
    """What a checkpoint carries besides DeepSpeed's model, optimizer and scheduler state."""

    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    pairs_done: int = 0
    tokens_done: int = 0
    token_slots_done: int = 0
    """Tokens computed including padding (perf/pad_fraction = 1 - tokens_done / token_slots_done)."""
    micro_batches_done: int = 0
    """Forward/backward passes, all ranks (perf/micro_batch_tokens_mean = token_slots_done / this)."""
    micro_batch_slots_max: int = 0
    """This rank's largest micro-batch in token slots (pads included)."""
    first_step_at: float = 0.0
    first_step_time: float = 0.0
    """Wall-clock (Unix) time at which step 1 ended: a bench measures time to first step from its launch."""
    steady_seconds: float = 0.0
    steady_pairs: int = 0
    steady_tokens: int = 0
    """Over the steps after the first loop.WARMUP_STEPS: each step's whole wall time (forward,
    backward, optimizer, all-reduces, metrics and the report barrier; not eval or checkpoints), its
    pairs and real tokens. train_seconds times the step's compute and all-reduces only."""
    stopper: dict[str, Any] = field(default_factory=dict)
    """Early-stopping and skip counters (Stopper's fields other than the config), filled at save time."""


def save_checkpoint(engine: Any, state: RunState, rank: int, metrics: dict[str, Any]) -> None:
    """Every rank writes its DeepSpeed shards (model, optimizer, scheduler) and RNG; rank 0 the run
    state. Ray merges the ranks' folders into one checkpoint. A collective."""
    import ray.train
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        engine.save_checkpoint(tmp, tag="deepspeed")  # collective
        torch.save(torch.get_rng_state(), os.path.join(tmp, f"rng_rank{rank}.pt"))
        if rank == 0:
            with open(os.path.join(tmp, "run_state.json"), "w") as f:
                json.dump(asdict(state), f)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def restore(engine: Any, rank: int, resume_path: str | None) -> RunState:
    """Load the latest Ray checkpoint (a restarted worker group) or ``resume_path`` (train.resume_from)."""
    import ray.train
    import torch

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and resume_path:
        checkpoint = ray.train.Checkpoint.from_directory(resume_path)
    if checkpoint is None:
        return RunState()
    with checkpoint.as_directory() as path:
        engine.load_checkpoint(path, tag="deepspeed")
        rng = os.path.join(path, f"rng_rank{rank}.pt")
        if os.path.exists(rng):
            torch.set_rng_state(torch.load(rng, weights_only=True))
        with open(os.path.join(path, "run_state.json")) as f:
            state = RunState(**json.load(f))
    if rank == 0:
        print(f"[dpo_ray] resumed at step {state.step}", flush=True)
    return state


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint folder holds (its run_state.json), 0 when unreadable."""
    try:
        return int(json.loads((path / "run_state.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def find_checkpoint(path: str) -> str:
    """train.resume_from: a checkpoint folder, or a run's output_dir (its newest training checkpoint)."""
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise ConfigError(f"train.resume_from={path}: no such directory; give the output_dir of a stopped run "
                          "(or one of its ray/*/checkpoint_* folders)")
    if (root / "run_state.json").exists():
        return str(root)
    found = latest_checkpoint(root)
    if found is None:
        raise ConfigError(f"train.resume_from={path}: no checkpoint found (looked for ray/*/checkpoint_*/run_state.json); "
                          "was the run started with train.checkpoint_every?")
    return str(found)


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest training checkpoint (one with run_state.json) Ray Train registered under
    ``<output_dir>/ray``, or None.

    Each run folder's checkpoint_manager_snapshot.json (Ray Train 2.60's record, rewritten when the
    controller registers a checkpoint) lists the ones it kept: a checkpoint folder written when the
    run was stopped, before Ray registered it, may miss a rank's files and is not used. A finished
    run's last checkpoint holds the model, not the training state: the one before it is taken. A run
    folder without that record counts each of its checkpoint folders."""
    candidates = []
    for run_dir in (p for p in output_dir.glob("ray/*") if p.is_dir()):
        snapshot = run_dir / "checkpoint_manager_snapshot.json"
        if snapshot.is_file():
            try:
                kept = json.loads(snapshot.read_text()).get("checkpoint_results") or []
            except json.JSONDecodeError:  # cut short when the run was killed: nothing registered to trust
                kept = []
            names = [r["checkpoint_dir_name"] for r in kept if "checkpoint_dir_name" in r]
        else:
            names = [p.name for p in run_dir.glob("checkpoint_*")]
        candidates += [run_dir / n / "run_state.json" for n in names if (run_dir / n / "run_state.json").is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime).parent if candidates else None
