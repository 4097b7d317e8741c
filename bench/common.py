"""Shared bench helpers: machine facts, versions, and the results files."""

from __future__ import annotations

import atexit
import datetime as dt
import functools
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from types import ModuleType
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
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")  # a payload's own "machine" wins
    return path


def head_pairs(source: Path, n: int, dest: Path) -> str:
    """The first ``n`` rows of the JSON Lines file ``source`` written to ``dest``: a smoke run's small copy."""
    dest.write_text("".join(source.read_text().splitlines(keepends=True)[:n]))
    return str(dest)


def scratch_dir(prefix: str) -> Path:
    """A fresh temporary directory, removed when the bench exits (models, data, caches, outputs)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, True)
    return path


def run_in_repo(cmd: list[str], in_process: bool = False) -> tuple[float, float]:
    """Run ``cmd`` in the repo root with a fresh local Ray (RAY_ADDRESS dropped); exit on failure with
    its output's tail. Returns (Unix time it was launched, wall seconds).

    ``in_process`` (the smoke modes): ``cmd`` is ``[python, script, *argv]`` and this process calls the
    script's own ``main(argv)`` instead, so the arms of one bench share one interpreter and one Ray
    session (the first arm starts it) rather than paying Python start, imports, ray.init and Ray's
    shutdown each. The arm's argv, parsing and outputs are the same."""
    if in_process:
        return _run_main(cmd[1], cmd[2:])
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    launched, start = time.time(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}\nexited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-4000:]}")
    return launched, wall


@functools.cache
def _script(path: str) -> ModuleType:
    """The entry script at ``path`` (relative to the repo) imported once as a module; its main() runs per call."""
    spec = importlib.util.spec_from_file_location(f"_bench_entry_{Path(path).stem}", REPO / path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path}: not a Python script under {REPO}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_main(script: str, argv: list[str]) -> tuple[float, float]:
    """``script``'s main(argv) here, in the repo root (where its relative paths point); exit on a nonzero
    return code (pipelines/*.py return one; bench/trl_dpo.py returns its result)."""
    os.environ.pop("RAY_ADDRESS", None)  # a local Ray, as the subprocesses get
    cwd = os.getcwd()
    os.chdir(REPO)
    launched, start = time.time(), time.perf_counter()
    try:
        code = _script(script).main(argv)
    finally:
        os.chdir(cwd)
    if isinstance(code, int) and code != 0:
        raise SystemExit(f"{script} {' '.join(argv)}\nreturned {code} (its error is printed above)")
    return launched, time.perf_counter() - start
