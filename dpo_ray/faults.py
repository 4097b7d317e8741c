"""Test-only fault hooks behind one switch: the environment variable DPO_RAY_TEST_FAULTS.

It holds a JSON object, read where a run is launched (run.run for the train workers,
reference/stage.score_reference for the scorer actors: the process that calls run(), a sweep trial's
included) and passed to the workers explicitly (train_loop_config["faults"], the scorer's
constructor), so nothing hidden crosses a process boundary. No run signature carries a test hook. Keys (each optional):

  {"train_crash_at_step": N, "train_marker": path}        the last train worker dies once at step N
  {"reference_crash_at_call": K, "reference_marker": path} the first scorer actor to reach call K dies once

"Once": the worker that fires creates the marker file first; a marker that exists fires no more,
so the restarted worker (or retried batch) runs on. Unset, the switch is empty and nothing fires.
"""

from __future__ import annotations

import json
import os
from typing import Any

FAULTS_ENV = "DPO_RAY_TEST_FAULTS"
KEYS = frozenset({"train_crash_at_step", "train_marker", "reference_crash_at_call", "reference_marker"})


def from_env() -> dict[str, Any]:
    """The switch's faults ({} when unset); an unknown key is an error, not a silent no-op."""
    raw = os.environ.get(FAULTS_ENV, "")
    faults = json.loads(raw) if raw else {}
    unknown = set(faults) - KEYS
    if unknown:
        raise ValueError(f"{FAULTS_ENV}: unknown keys {sorted(unknown)}; known: {sorted(KEYS)}")
    return faults


def fires_once(faults: dict[str, Any], stage: str, count: int) -> bool:
    """True the first time ``stage`` ("train" or "reference") reaches its crash point ``count``
    (a step or a call); it leaves the marker file behind so that no later attempt fires again."""
    at = faults.get(f"{stage}_crash_at_step" if stage == "train" else f"{stage}_crash_at_call")
    marker = faults.get(f"{stage}_marker")
    if at is None or count != at or not marker or os.path.exists(marker):
        return False
    open(marker, "w").close()
    return True
