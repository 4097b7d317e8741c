"""Two Ray nodes on this machine (a head and a second `ray start --address` node, each with its own
resources and temp dir, token auth on), driven only through `ray job submit`:

- a short training run whose two workers land on different nodes (from the run's recorded placement),
  with outputs and checkpoints on a path both nodes share, and the HF_TOKEN passed through from the
  submitting shell (cluster/runtime_env.py) written into no output and no job log;
- the same with a short sweep (once pipelines/sweep.py exists);
- a job with a bad config fails fast with the one-line config error in `ray job logs`, and the
  cluster then runs the next job on both nodes.

One cluster for the module; the nodes are stopped at the end even when a test fails (tests/_cluster.py).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from _cluster import LocalCluster, local_cluster, ray_env
from conftest import REPO, SHORT_RUN_PROGRESS, progress_steps, small_overrides

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # a two-node cluster, a Ray job per test
FAKE_TOKEN = "hf_FAKE_dpo_ray_multinode_456"
SPREAD = {"train.placement_strategy": "STRICT_SPREAD", "train.cpus_per_worker": 1}


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    # One CPU per node: the job driver takes none, Ray Data's tokenize and reference actors run one at
    # a time, and each node holds exactly one train worker.
    with local_cluster([{"node_a": 1}, {"node_b": 1}], num_cpus=1) as c:
        yield c


def _runtime_env_json() -> str:
    """What a user passes as --runtime-env-json: cluster/runtime_env.py with HF_TOKEN in the shell.
    --no-pip: this machine already has the pinned packages (a venv build would take minutes)."""
    proc = subprocess.run([sys.executable, "cluster/runtime_env.py", "--no-pip"], cwd=REPO,
                          env={**ray_env(), "HF_TOKEN": FAKE_TOKEN}, capture_output=True, text=True, check=True)
    return proc.stdout


def _submit(cluster: LocalCluster, entrypoint: list[str], timeout: int) -> tuple[str, subprocess.CompletedProcess[str]]:
    job_id = f"dpo-test-{uuid.uuid4().hex[:8]}"
    proc = cluster.ray("job", "submit", "--submission-id", job_id, "--runtime-env-json", _runtime_env_json(), "--",
                       *entrypoint, timeout=timeout, cwd=REPO)
    return job_id, proc


def _assert_spread(metrics: dict, cluster: LocalCluster) -> None:
    placement = metrics["placement/worker_nodes"]  # Ray node id of each rank, rank order
    assert len(placement) == 2 and len(set(placement)) == 2, placement
    assert set(placement) == {n["node_id"] for n in cluster.alive_nodes()}  # the head and the second node


def _assert_token_nowhere(root: Path, *texts: str) -> None:
    for text in texts:
        assert FAKE_TOKEN not in text
    for path in root.rglob("*"):
        if path.is_file():
            assert FAKE_TOKEN.encode() not in path.read_bytes(), path


def test_dashboard_is_local_and_needs_the_token(cluster: LocalCluster) -> None:
    listening = {c.laddr.ip for c in psutil.net_connections(kind="tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == cluster.dashboard_port}
    assert listening == {"127.0.0.1"}
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{cluster.address}/api/jobs/", timeout=30)  # no token
    assert err.value.code == 401


def test_training_job_places_workers_on_two_nodes(
    cluster: LocalCluster, tiny_model_dir: str, pairs_jsonl: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    shared = tmp_path_factory.mktemp("shared")  # both nodes see it, as they would an NFS share
    out = shared / "run"
    overrides = small_overrides(tiny_model_dir, pairs_jsonl, str(out), **SPREAD, **{"train.checkpoint_every": 2,
                                                                                     "train.logging_steps": 2})
    job_id, proc = _submit(cluster, ["python", "pipelines/dpo.py", *overrides], timeout=420)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "== dpo_ray summary ==" in proc.stdout
    # the job's log (what `ray job logs` shows): the driver's progress lines, plain, once each, in order
    assert progress_steps(proc.stdout) == SHORT_RUN_PROGRESS, proc.stdout
    assert "\r" not in proc.stdout and "(RayTrainWorker" not in proc.stdout
    assert f"Job '{job_id}' succeeded" in cluster.ray("job", "status", job_id).stdout

    metrics = json.loads((out / "metrics.json").read_text())
    _assert_spread(metrics, cluster)
    assert (out / "model" / "model.safetensors").exists()
    # Both ranks wrote their DeepSpeed shards into the step-2 checkpoint on the shared path.
    (step2,) = [c.parent for c in (out / "ray").glob("*/checkpoint_*/run_state.json") if json.loads(c.read_text())["step"] == 2]
    ranks = {m.group(1) for p in step2.rglob("*zero_pp_rank_*") if (m := re.search(r"zero_pp_rank_(\d+)_", p.name))}
    assert ranks == {"0", "1"}

    logs = cluster.ray("job", "logs", job_id).stdout
    _assert_token_nowhere(shared, proc.stdout, proc.stderr, logs)


def test_sweep_job_places_workers_on_two_nodes(
    cluster: LocalCluster, tiny_model_dir: str, pairs_jsonl: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    if not (REPO / "pipelines" / "sweep.py").exists():
        pytest.skip("pipelines/sweep.py not present")
    shared = tmp_path_factory.mktemp("shared-sweep")
    out = shared / "sweep"
    overrides = small_overrides(tiny_model_dir, pairs_jsonl, str(out), **SPREAD)
    tune = ["tune.searcher=random", "tune.num_samples=1", "tune.scheduler=none"]  # one trial: its workers on both nodes
    job_id, proc = _submit(cluster, ["python", "pipelines/sweep.py", "--config", "pipelines/configs/sweep.yaml",
                                     *overrides, *tune], timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    trial_metrics = sorted(out.rglob("metrics.json"))
    assert trial_metrics, f"no metrics.json under {out}"
    for path in trial_metrics:
        _assert_spread(json.loads(path.read_text()), cluster)
    _assert_token_nowhere(shared, proc.stdout, proc.stderr, cluster.ray("job", "logs", job_id).stdout)


def test_bad_config_fails_fast_and_the_cluster_runs_the_next_job(cluster: LocalCluster) -> None:
    start = time.monotonic()
    job_id, proc = _submit(cluster, ["python", "pipelines/dpo.py", "train.batch_size=oops"], timeout=180)
    assert proc.returncode != 0
    assert time.monotonic() - start < 60  # no data, model or worker was started
    assert f"Job '{job_id}' failed" in cluster.ray("job", "status", job_id).stdout
    logs = cluster.ray("job", "logs", job_id).stdout
    errors = [line for line in logs.splitlines() if line.startswith("dpo_ray: error:")]
    assert errors == ["dpo_ray: error: train.batch_size='oops': expected int, got str"]
    assert "Traceback" not in logs

    _, nxt = _submit(cluster, ["python", "-c", "import ray; ray.init(); print(sorted(ray.cluster_resources()))"], timeout=180)
    assert nxt.returncode == 0, (nxt.stdout + nxt.stderr)[-3000:]
    assert "'node_a'" in nxt.stdout and "'node_b'" in nxt.stdout
    assert len(cluster.alive_nodes()) == 2
