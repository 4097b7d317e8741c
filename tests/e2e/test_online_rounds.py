"""Iterative DPO end to end: pipelines/online_dpo.py in a subprocess with the shipped example config,
made small (48 prompts, 3 samples each, best-vs-worst pairs, 1 training worker): 2 rounds, killed during round 2's training
and resumed; more rounds asked of a finished run; a judge that returns NaN and a policy that only says
EOS stop with one line and keep every finished round."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _cluster import ray_env
from conftest import REPO, TESTS
from dpo_ray.toy import make_prompts

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
SCRIPT = str(REPO / "pipelines" / "online_dpo.py")


def _env(**extra: str) -> dict[str, str]:
    env = ray_env()  # tests/ on the PYTHONPATH: the driver and Ray's workers import _online_plugins from there
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH", "")) if p)
    return env | extra


def _args(tmp_path: Path, *extra: str) -> list[str]:
    prompts = tmp_path / "prompts.jsonl"
    if not prompts.exists():
        prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in make_prompts(48, seed=3)))
    return [SCRIPT, f"online.prompts={prompts}", "online.rounds=2", "online.heldout_fraction=0.25",
            "online.samples_per_prompt=3", "online.eval_samples_per_prompt=1", "online.generation.max_new_tokens=12",
            "online.pairing=best_vs_worst",
            "online.judge=_online_plugins:judge", "train.num_workers=1", "train.epochs=1", "train.batch_size=8",
            "train.micro_batch_size=4", f"output_dir={tmp_path / 'out'}",
            f"reference.cache_dir={tmp_path / 'refcache'}", f"data.cache_dir={tmp_path / 'datacache'}", *extra]


def _run(tmp_path: Path, *extra: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *_args(tmp_path, *extra)], cwd=REPO, env=_env(**env), capture_output=True,
                          text=True, timeout=600)


def _stamps(out: Path) -> dict[str, int]:
    """Every round file's modification time (ns): what a rerun rewrote."""
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted(out.glob("round_*/*")) if p.is_file()}


def _one_error_line(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("dpo_ray: error: ")]
    assert len(errors) == 1 and all(n in errors[0] for n in needles), proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr


def test_two_rounds_killed_resumed_extended_and_a_bad_judge(tmp_path: Path) -> None:
    out = tmp_path / "out"
    killed = subprocess.Popen([sys.executable, *_args(tmp_path)], cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:  # kill the driver, Ray and its workers (one process group) once round 2's training has begun
        deadline = time.monotonic() + 500
        while not (out / "round_2" / "train").exists() and killed.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert killed.poll() is None, "the run ended before round 2's training began"
        os.killpg(killed.pid, signal.SIGKILL)
    finally:
        killed.wait(60)
    assert (out / "round_1" / "round.json").exists() and not (out / "round_2" / "round.json").exists()
    before = _stamps(out)

    resumed = _run(tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = _stamps(out)
    kept = [k for k in before if k.startswith("round_0/") or k.startswith("round_1/")
            or k in ("round_2/samples.jsonl", "round_2/generations.jsonl", "round_2/pairs.jsonl")]
    assert kept and all(after[k] == before[k] for k in kept)  # finished rounds and stages were not redone
    assert {"round_2/heldout.jsonl", "round_2/round.json"} <= set(after) - set(before)
    with open(out / "rounds.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["round"] for r in rows] == ["0", "1", "2"]
    assert {"heldout_mean_score", "win_rate_vs_initial", "pairs", "skipped_ties"} <= set(rows[0])
    assert rows[0]["win_rate_vs_initial"] == "0.5" and all(int(r["pairs"]) > 0 for r in rows[1:])
    assert (out / "rounds.png").stat().st_size > 0
    assert (out / "model" / "config.json").exists() and (out / "model" / "model.safetensors").exists()
    pairs = [json.loads(line) for line in (out / "round_1" / "pairs.jsonl").read_text().splitlines()]
    assert all(p["chosen_score"] > p["rejected_score"] for p in pairs)
    assert "online: 2 rounds; held-out mean score" in resumed.stdout

    # a third round asked of the finished run, with a judge that now returns NaN: one line, rounds 1-2 kept
    finished = _stamps(out)
    bad = _run(tmp_path, "online.rounds=3", DPO_TEST_JUDGE_NAN="1")
    _one_error_line(bad, "online.judge=_online_plugins:judge returned a non-finite score", "finished rounds are kept")
    assert all(_stamps(out)[k] == finished[k] for k in finished)
    assert (out / "round_3" / "samples.jsonl").exists() and not (out / "round_3" / "generations.jsonl").exists()
    with open(out / "rounds.csv") as f:
        assert [r["round"] for r in csv.DictReader(f)] == ["0", "1", "2"]


def test_a_policy_that_only_says_eos_and_a_judge_that_cannot_be_imported(tmp_path: Path) -> None:
    missing = _run(tmp_path, "online.judge=no_such_module:score")
    _one_error_line(missing, "online.judge=no_such_module:score: cannot import module 'no_such_module'")
    assert not (tmp_path / "out" / "round_0").exists()  # stopped before Ray started
    empty = _run(tmp_path, "online.generation.generator=_online_plugins:EmptyGenerator")
    _one_error_line(empty, "round 1: all ", " sampled responses are empty (the policy ends at once)")
    assert (tmp_path / "out" / "round_0" / "heldout.jsonl").exists()  # the stages that ran are kept
    assert (tmp_path / "out" / "round_1" / "samples.jsonl").exists() and not (tmp_path / "out" / "round_1" / "generations.jsonl").exists()
