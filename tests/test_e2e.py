"""End to end: pipelines/dpo.py in a subprocess, and the same job through `ray job submit`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO, small_overrides

pytestmark = pytest.mark.e2e
SCRIPT = str(REPO / "pipelines" / "dpo.py")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)


def test_precompute_then_quickstart_hits_the_cache(tmp_path: Path) -> None:
    # The shipped quickstart config, model and data; fewer steps to keep the suite short.
    out, cache = tmp_path / "qs", tmp_path / "refcache"
    pre = subprocess.run([sys.executable, str(REPO / "pipelines" / "precompute_ref.py"), f"reference.cache_dir={cache}",
                          f"output_dir={out}"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert pre.returncode == 0, pre.stderr[-3000:]
    assert "reference: scored and cached (" in pre.stdout
    assert not (out / "model").exists()
    proc = _run(["train.max_steps=4", "train.eval_every=2", f"output_dir={out}", f"reference.cache_dir={cache}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "== dpo_ray summary ==" in proc.stdout
    assert "reference  cache hit (" in proc.stdout and "no reference model loaded" in proc.stdout
    assert f"model      {out / 'model'}" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data/rows_read"] == 3000 and metrics["perf/num_workers"] == 2
    assert metrics["ref/cache_hit"] == 1.0
    assert (out / "model" / "config.json").exists() and (out / "config.yaml").exists()


def test_existing_run_is_not_overwritten(tmp_path: Path, tiny_model_dir: str, pairs_jsonl: str) -> None:
    out = tmp_path / "run"
    (out / "model").mkdir(parents=True)
    (out / "model" / "keep.txt").write_text("mine")
    proc = _run(small_overrides(tiny_model_dir, pairs_jsonl, str(out), overwrite_output_dir="false"))
    assert proc.returncode == 2
    assert "already holds a finished run" in proc.stderr
    assert (out / "model" / "keep.txt").read_text() == "mine"


def test_unknown_key_is_one_line_and_fast(tmp_path: Path) -> None:
    proc = _run(["train.max_stepz=3", f"output_dir={tmp_path}"], timeout=120)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("dpo_ray: error: unknown config key 'train.max_stepz' (known in train: learning_rate, ")
    assert " max_steps, " in line
    assert not any(tmp_path.iterdir())


def test_bad_row_is_one_clear_line(tmp_path: Path, tiny_model_dir: str) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "p", "chosen": "c", "rejected": "r"}\n{"prompt": "p", "chosen": 7, "rejected": "r"}\n')
    out = tmp_path / "run"
    proc = _run(small_overrides(tiny_model_dir, str(data), str(out)))
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("dpo_ray: error:")]
    assert errors == [f"dpo_ray: error: 1 of 2 rows dropped (50.0% > data.max_drop_fraction=0.05): non_string 1 "
                      f"(e.g. {data}:2: 'chosen' is int, expected a string); see {out / 'data_report.json'}"]
    assert "Traceback" not in proc.stderr
    assert not (out / "model").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def ray_head() -> Iterator[dict[str, str]]:
    """`ray start --head --block` on 127.0.0.1 in its own process group, stopped afterwards even on failure."""
    temp_dir = tempfile.mkdtemp(prefix="dpr-", dir="/tmp")  # short: Ray's socket paths have a length limit
    port, dash = _free_port(), _free_port()
    env = {**_env(), "RAY_AUTH_MODE": "token"}  # token auth stays on (RAY-DEEPSPEED-NOTES.md)
    log = open(Path(temp_dir) / "head.log", "w")
    head = subprocess.Popen(
        ["ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--temp-dir={temp_dir}", "--include-dashboard=true"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        address = f"http://127.0.0.1:{dash}"
        deadline = time.time() + 120
        while subprocess.run(["ray", "job", "list", "--address", address], env=env, capture_output=True).returncode != 0:
            assert head.poll() is None, (Path(temp_dir) / "head.log").read_text()[-2000:]
            assert time.time() < deadline, "ray head did not come up in 120 s"
            time.sleep(2)
        yield {"address": address, **env}
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # the head drains, then stops the processes it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        log.close()


def test_ray_job_submit(ray_head: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "job"
    env = dict(ray_head)
    address = env.pop("address")
    runtime_env = json.dumps({"working_dir": str(REPO), "excludes": ["outputs/", ".git/", "**/__pycache__/"]})
    proc = subprocess.run(
        ["ray", "job", "submit", "--address", address, "--runtime-env-json", runtime_env, "--",
         "python", "pipelines/dpo.py", "train.max_steps=4", "train.eval_every=2", f"output_dir={out}"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "== dpo_ray summary ==" in proc.stdout
    assert (out / "model" / "model.safetensors").exists()
    assert json.loads((out / "metrics.json").read_text())["perf/num_workers"] == 2
