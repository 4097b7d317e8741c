"""End to end: pipelines/dpo.py in a subprocess, and a small online_dpo.py round through `ray job submit`
(the training job through `ray job submit`: test_multinode.py; bad input: test_bad_input.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from _cluster import local_cluster, ray_env
from conftest import REPO, SHORT_RUN_PROGRESS, progress_steps
from dpo_ray.toy import make_prompts

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # each test runs the pipeline (minutes on 2 cores)
SCRIPT = str(REPO / "pipelines" / "dpo.py")


def _run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=REPO, env=ray_env(), capture_output=True, text=True, timeout=timeout)


def assert_quiet(output: str) -> None:
    """The default console: our lines only (stage lines, progress, summary), no Ray log line, warning,
    colour code or traceback."""
    assert len(output.splitlines()) < 40, output
    assert progress_steps(output) == SHORT_RUN_PROGRESS, output
    for noise in ("Warning", "WARNING", "\x1b[", "Traceback", " INFO ", "TrainingReport", "(RayTrainWorker"):
        assert noise not in output, (noise, output)


def test_precompute_then_quickstart_hits_the_cache(tmp_path: Path) -> None:
    # The shipped quickstart config, model and data; fewer steps to keep the suite short.
    out, cache = tmp_path / "qs", tmp_path / "refcache"
    pre = subprocess.run([sys.executable, str(REPO / "pipelines" / "precompute_ref.py"), f"reference.cache_dir={cache}",
                          f"output_dir={out}"], cwd=REPO, env=ray_env(), capture_output=True, text=True, timeout=600)
    assert pre.returncode == 0, pre.stderr[-3000:]
    assert "reference: scored and cached (" in pre.stdout
    assert not (out / "model").exists()
    assert "Traceback" not in pre.stdout + pre.stderr and " INFO " not in pre.stdout + pre.stderr
    proc = _run(["train.max_steps=4", "train.eval_every=2", "train.logging_steps=2", f"output_dir={out}", f"reference.cache_dir={cache}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_quiet(proc.stdout + proc.stderr)  # both streams, as a log file (2>&1) gets them
    assert "[dpo_ray] eval at step 0/4 loss 0.6931 acc 0.000 " in proc.stderr  # policy == reference: ties, no wins
    log_dir = json.loads((out / "metrics.json").read_text())["ray/log_dir"]  # Ray's own output went there
    assert f"ray logs   {log_dir} " in proc.stdout and Path(log_dir).is_dir()
    assert "== dpo_ray summary ==" in proc.stdout
    assert "reference  cache hit (" in proc.stdout and "no reference model loaded" in proc.stdout
    assert f"model      {out / 'model'}" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data/rows_read"] == 3000 and metrics["perf/num_workers"] == 2
    assert metrics["ref/cache_hit"] == 1.0
    assert (out / "model" / "config.json").exists() and (out / "config.yaml").exists()


@pytest.fixture
def ray_head() -> Iterator[dict[str, str]]:
    """A one-node `ray start --head` on 127.0.0.1 (tests/_cluster.py), stopped afterwards even on failure."""
    with local_cluster([{}], num_cpus=2) as cluster:
        yield {"address": cluster.address, **cluster.env}


def test_ray_job_submit(ray_head: dict[str, str], tmp_path: Path) -> None:
    """The online pipeline as a job on a `ray start` head, the repo uploaded as its working_dir. The
    training job through `ray job submit` (its progress lines in the job log): test_multinode.py."""
    env = dict(ray_head)
    address = env.pop("address")
    runtime_env = json.dumps({"working_dir": str(REPO), "excludes": ["outputs/", ".git/", "**/__pycache__/"]})

    # one small round, shipped model and judge
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in make_prompts(40, seed=5)))
    online = tmp_path / "online"
    proc = subprocess.run(
        ["ray", "job", "submit", "--address", address, "--runtime-env-json", runtime_env, "--",
         "python", "pipelines/online_dpo.py", "online.rounds=1", f"online.prompts={prompts}", "online.heldout_fraction=0.25",
         "online.samples_per_prompt=3", "online.eval_samples_per_prompt=1", "online.generation.max_new_tokens=12",
         "online.pairing=best_vs_worst", "train.batch_size=8", "train.micro_batch_size=4", "train.epochs=1",
         f"output_dir={online}", f"reference.cache_dir={tmp_path / 'online-refcache'}", f"data.cache_dir={tmp_path / 'online-datacache'}"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "online: 1 rounds; held-out mean score" in proc.stdout and "Traceback" not in proc.stdout
    assert (online / "rounds.csv").read_text().count("\n") == 3 and (online / "model" / "model.safetensors").exists()
