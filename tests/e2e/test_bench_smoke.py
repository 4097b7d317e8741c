"""The benchmarks' smoke modes end to end into a temp results dir, and the charts."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO

pytestmark = pytest.mark.e2e


def _smoke(script: str, results: Path, timeout: int) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / script), "--smoke", "--results-dir", str(results)],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    result = json.loads((results / script.replace(".py", ".json")).read_text())
    assert {"machine", "command", "notes"} <= set(result) and result["machine"]["ray"] and result["machine"]["date"]
    return result


@pytest.mark.slow
def test_sweep_bench_smoke(tmp_path: Path) -> None:
    result = _smoke("sweep.py", tmp_path, timeout=900)
    with_trl = importlib.util.find_spec("trl") is not None
    arms = {a["arm"]: a for a in result["arms"]}
    assert set(arms) == {"sweep", "separate"} | ({"trl"} if with_trl else set())
    assert all(a["runs"] == 2 and a["total_wall_s"] > 0 and 0 <= a["mean_eval_acc"] <= 1 for a in arms.values())
    assert arms["sweep"]["reference_scoring_passes"] == 1  # one pass for the whole sweep
    assert arms["separate"]["reference_scoring_passes"] == 2  # one per run: no shared cache
    configs = {(r["beta"], r["learning_rate"]) for r in result["runs"] if r["arm"] == "sweep"}
    assert len(configs) == 2
    for arm in arms:  # every arm trained the same configs
        assert {(r["beta"], r["learning_rate"]) for r in result["runs"] if r["arm"] == arm} == configs
    assert not any(r["reference_scored"] for r in result["runs"] if r["arm"] == "sweep")
    assert result["separate_over_sweep"] > 0
    if with_trl:
        assert result["trl_over_sweep"] > 0 and result["trl_version"]
    else:
        assert "trl_skipped" in result


@pytest.mark.slow
def test_data_bench_smoke(tmp_path: Path) -> None:
    result = _smoke("data.py", tmp_path, timeout=600)
    assert [(r["pairs"], r["cpus"]) for r in result["throughput"]] == [(2000, 1), (2000, 2)]
    assert all(r["tokenize_pairs_per_s"] > 0 and r["pairs_kept"] == r["pairs"] for r in result["throughput"])
    assert [m["pairs"] for m in result["memory"]] == [2000, 8000]
    assert all(m["peak_rss_mib"] >= m["baseline_rss_mib"] > 0 for m in result["memory"])
    assert result["driver_rss_growth"] > -1 and result["driver_rss_flat"] == (result["driver_rss_growth"] < 0.2)
    assert [c["tokenize_cache_hit"] for c in result["cache"]] == [0.0, 1.0]  # the rerun skipped tokenization
    assert result["speedup_2_vs_1_cpu"] > 0 and result["cache_rerun_speedup"] > 0


@pytest.mark.slow
def test_padding_bench_smoke(tmp_path: Path) -> None:
    result = _smoke("padding.py", tmp_path, timeout=600)
    runs = {r["data"]: r for r in result["runs"]}
    assert set(runs) == {"quickstart", "varying_lengths"} and all(r["micro_batch_size"] == 4 for r in runs.values())
    assert all(0 <= r["grouped"] < 1 and 0 <= r["ungrouped"] < 1 for r in runs.values())
    assert runs["varying_lengths"]["grouped"] < runs["varying_lengths"]["ungrouped"]  # grouping pads less


@pytest.mark.slow
def test_memory_bench_smoke(tmp_path: Path) -> None:
    result = _smoke("memory.py", tmp_path, timeout=900)
    assert [(r["zero_stage"], r["workers"]) for r in result["runs"]] == [(2, 1), (2, 2), (3, 1), (3, 2)]
    assert all(0 < r["model_state_mib_per_worker"] < r["peak_memory_mib_per_worker"] for r in result["runs"])
    assert result["zero3_2_vs_1_workers"] > 0 and isinstance(result["zero3_target_met"], bool)


@pytest.mark.slow
def test_throughput_bench_smoke(tmp_path: Path) -> None:
    result = _smoke("throughput.py", tmp_path, timeout=900)
    with_trl = importlib.util.find_spec("trl") is not None
    arms = {a["arm"]: a for a in result["arms"]}
    assert set(arms) == {"dpo_ray 2 workers", "dpo_ray 2 workers, no length grouping", "dpo_ray 1 worker"} | (
        {"TRL default", "TRL precompute_ref_log_probs=True"} if with_trl else set())
    for a in arms.values():
        assert a["steady_pairs_per_second"] > 0 and a["steady_tokens_per_second"] > a["steady_pairs_per_second"]
        assert 0 < a["seconds_to_first_step"] < 900
    assert arms["dpo_ray 2 workers"]["workers"] == 2 and arms["dpo_ray 2 workers"]["reference_seconds"] > 0
    assert result["scaling_2_vs_1_workers"] > 0 and result["memory_2_vs_1_workers"] > 0
    assert arms["dpo_ray 2 workers"]["pad_fraction"] < arms["dpo_ray 2 workers, no length grouping"]["pad_fraction"]
    if with_trl:
        assert result["vs_trl_default"] > 0 and result["vs_trl_precompute"] > 0 and isinstance(result["targets_met"], bool)
    else:
        assert "trl_skipped" in result
    uniform = result["uniform"]  # issue 16: one worker, no resource settings
    ours = next(a for a in uniform["arms"] if a["arm"] == "dpo_ray 1 worker, defaults")
    cpus = os.cpu_count()  # Ray's CPUs on this one node
    assert ours["auto"] == f"train.cpus_per_worker={cpus} ({cpus} CPUs on the node for 1 worker); train.zero_stage=0 (1 rank: ZeRO would partition nothing)"
    assert ours["steady_pairs_per_second"] > 0
    if with_trl:
        assert uniform["vs_trl_default"] > 0 and isinstance(uniform["targets_met"], bool)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="parity needs TRL (the dev extra installs it)")
def test_parity_bench_smoke(tmp_path: Path) -> None:
    result = _smoke("parity.py", tmp_path, timeout=900)
    assert {(r["loss"], r["arm"]) for r in result["runs"]} == {("sigmoid", "dpo_ray"), ("sigmoid", "trl")}
    rows = {r["metric"]: r for r in result["comparison"]}
    assert set(rows) == {"eval/rewards/accuracies", "eval/rewards/margins", "eval/loss"}
    assert abs(rows["eval/loss"]["step0_dpo_ray"] - 0.6931) < 1e-3 and abs(rows["eval/loss"]["step0_trl"] - 0.6931) < 1e-3
    assert result["step0_equal"] is True  # same model, same held-out pairs: loss ln 2 and margins 0 in both


@pytest.mark.slow
def test_mfu_bench_smoke(tmp_path: Path) -> None:
    result = _smoke("mfu.py", tmp_path, timeout=600)
    assert result["matmul_peak_gflops"] > 0 and result["pad_fraction"] == 0  # every sequence exactly 512 tokens
    assert result["achieved_gflops"] > 0 and 0 < result["mfu"] < 1.5 and result["sequence_length"] == 512


def test_plots_draw_every_committed_result(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "plots.py"), "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.name for p in tmp_path.glob("*.png")} == {f"{name}.png" for name in (
        "reference", "padding", "memory", "data", "sweep", "throughput", "parity", "mfu")}
    assert all(p.stat().st_size > 10_000 for p in tmp_path.glob("*.png"))
