"""Shared bench helpers: machine facts, versions, and the results files."""

from __future__ import annotations

import atexit
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
PACKAGES = ("torch", "ray", "deepspeed", "transformers")


def machine() -> dict[str, Any]:
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_kib / 2**20, 1), "gpu": _gpu(),
        "python": platform.python_version(), **{p: version(p) for p in PACKAGES},
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _gpu() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"


def write_result(name: str, payload: dict[str, Any], results_dir: Path = RESULTS) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    return path


def scratch_dir(prefix: str) -> Path:
    """A fresh temporary directory, removed when the bench exits (models, data, caches, outputs)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, True)
    return path


def run_in_repo(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd`` in the repo root with a fresh local Ray (RAY_ADDRESS dropped); exit on failure with
    its output's tail. Returns (Unix time it was launched, wall seconds)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    launched, start = time.time(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}\nexited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-4000:]}")
    return launched, wall
