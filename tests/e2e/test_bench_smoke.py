"""The benchmarks' smoke modes end to end into a temp results dir, and the charts.

A smoke mode runs each arm function of its bench once, not each measurement (a ratio whose second arm
it leaves out is the full run's; each test asserts it absent rather than skipping it silently): the
benches' plan functions (arm_plan, arm_configs, run_plan, data_plan, measurement_plan) name what the
smoke and the full runs do, and test_smoke_plans_name_the_full_benches_arms checks the full plans
against what the committed bench/results/*.json measured.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from conftest import REPO

pytestmark = pytest.mark.e2e
BENCH = REPO / "bench"
WITH_TRL = importlib.util.find_spec("trl") is not None


def _bench(name: str) -> ModuleType:
    """bench/<name>.py as a module, for its plan functions (bench/ last on sys.path: its scripts import
    `common` by name, and no other module of that name exists)."""
    if str(BENCH) not in sys.path:
        sys.path.append(str(BENCH))
    return importlib.import_module(name)


def _committed(name: str) -> dict[str, Any]:
    return json.loads((BENCH / "results" / f"{name}.json").read_text())


def _smoke(script: str, results: Path, timeout: int) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / script), "--smoke", "--results-dir", str(results)],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    result = json.loads((results / script.replace(".py", ".json")).read_text())
    assert {"machine", "command", "notes"} <= set(result) and result["machine"]["ray"] and result["machine"]["date"]
    return result


@pytest.mark.slow
def test_sweep_bench_smoke(tmp_path: Path) -> None:
    result = _smoke("sweep.py", tmp_path, timeout=600)
    plan = _bench("sweep").arm_configs(smoke=True)  # a 2-trial sweep; separate and trl on its first config
    arms = {a["arm"]: a for a in result["arms"]}
    assert set(arms) == {"sweep", "separate"} | ({"trl"} if WITH_TRL else set())
    for arm, a in arms.items():  # each arm trained its planned configs, once each
        assert sorted((r["beta"], r["learning_rate"]) for r in result["runs"] if r["arm"] == arm) == sorted(plan[arm])
        assert a["runs"] == len(plan[arm]) and a["total_wall_s"] > 0 and 0 <= a["mean_eval_acc"] <= 1
    assert len(plan["sweep"]) == 2 and arms["sweep"]["reference_scoring_passes"] == 1  # one pass for the whole sweep
    assert arms["separate"]["reference_scoring_passes"] == len(plan["separate"])  # one per run: no shared cache
    assert not any(r["reference_scored"] for r in result["runs"] if r["arm"] == "sweep")
    assert all(r["reference_scored"] for r in result["runs"] if r["arm"] == "separate")
    assert result["separate_over_sweep"] > 0
    if WITH_TRL:
        assert result["trl_over_sweep"] > 0 and result["trl_version"]
    else:
        assert "trl_skipped" in result


@pytest.mark.slow
def test_data_bench_smoke(tmp_path: Path) -> None:
    result = _smoke("data.py", tmp_path, timeout=600)
    sections = _bench("data").measurement_plan(True, 2000, 8000)
    assert {s: [(r["pairs"], r["cpus"], r["cache"]) for r in result[s]] for s in sections} == sections
    assert len({m for ms in sections.values() for m in ms}) == 3  # fresh processes: 2,000 pairs (cold cache), 8,000, the rerun
    assert [(r["pairs"], r["cpus"]) for r in result["throughput"]] == [(2000, 2)]
    assert all(r["tokenize_pairs_per_s"] > 0 and r["pairs_kept"] == r["pairs"] for r in result["throughput"])
    assert [m["pairs"] for m in result["memory"]] == [2000, 8000]
    assert all(m["peak_rss_mib"] >= m["baseline_rss_mib"] > 0 for m in result["memory"])
    assert result["driver_rss_growth"] > -1 and result["driver_rss_flat"] == (result["driver_rss_growth"] < 0.2)
    assert [c["tokenize_cache_hit"] for c in result["cache"]] == [0.0, 1.0]  # the rerun skipped tokenization
    assert "speedup_2_vs_1_cpu" not in result and result["cache_rerun_speedup"] > 0  # the 1-CPU run is the full plan's


@pytest.mark.slow
def test_padding_bench_smoke(tmp_path: Path) -> None:
    result = _smoke("padding.py", tmp_path, timeout=600)
    runs = {r["data"]: r for r in result["runs"]}
    assert list(runs) == _bench("padding").data_plan(smoke=True) == ["varying_lengths"]
    assert all(r["micro_batch_size"] == 4 for r in runs.values())
    assert all(0 <= r["grouped"] < 1 and 0 <= r["ungrouped"] < 1 for r in runs.values())
    assert runs["varying_lengths"]["grouped"] < runs["varying_lengths"]["ungrouped"]  # grouping pads less
    reads = {r["workers"]: r for r in result["worker_reads"]}
    assert list(reads) == [1, 2, 4]
    one = reads[1]["train_rows_per_worker"][0]
    for world, r in reads.items():  # each rank reads 1/W of the epoch's train rows, and the eval pairs once in all
        assert r["train_rows_per_worker"] == [one // world] * world
        assert sum(r["train_bytes_per_worker"]) == reads[1]["train_bytes_per_worker"][0]
        assert sum(r["eval_rows_per_worker"]) == reads[1]["eval_rows_per_worker"][0] > 0


@pytest.mark.slow
def test_memory_bench_smoke(tmp_path: Path) -> None:
    result = _smoke("memory.py", tmp_path, timeout=600)
    assert [(r["zero_stage"], r["workers"]) for r in result["runs"]] == _bench("memory").run_plan(smoke=True) == [(3, 1), (3, 2)]
    assert all(0 < r["model_state_mib_per_worker"] < r["peak_memory_mib_per_worker"] for r in result["runs"])
    assert result["zero3_2_vs_1_workers"] > 0 and isinstance(result["zero3_target_met"], bool)


@pytest.mark.slow
def test_throughput_bench_smoke(tmp_path: Path) -> None:
    result = _smoke("throughput.py", tmp_path, timeout=600)
    plan = _bench("throughput").arm_plan(smoke=True, has_trl=WITH_TRL)
    arms = {a["arm"]: a for a in result["arms"]}
    assert list(arms) == plan["varying"] and [a["arm"] for a in result["uniform"]["arms"]] == plan["uniform"]
    for a in [*arms.values(), *result["uniform"]["arms"]]:
        assert a["steady_pairs_per_second"] > 0 and a["steady_tokens_per_second"] > a["steady_pairs_per_second"]
        assert 0 < a["seconds_to_first_step"] < 600
    assert arms["dpo_ray 2 workers"]["workers"] == 2 and arms["dpo_ray 2 workers"]["reference_seconds"] > 0
    assert arms["dpo_ray 2 workers"]["caches"] == "cold" and arms["dpo_ray 2 workers"]["peak_memory_mib_per_worker"] > 0
    assert "scaling_2_vs_1_workers" not in result  # the 1-worker arm is the full plan's
    # grouped vs ungrouped padding: test_padding_bench_smoke (the ungrouped arm is the full plan's)
    if WITH_TRL:
        assert result["vs_trl_default"] > 0 and result["vs_trl_precompute"] > 0 and isinstance(result["targets_met"], bool)
        assert "ungrouped_vs_trl_precompute" not in result  # its arm did not run
    else:
        assert "trl_skipped" in result
    long = {a["arm"]: a for a in result["long"]["arms"]}  # issue 20: long conversations, length-grouped vs packed
    assert list(long) == plan["long"] and long["dpo_ray 2 workers, token budget + packed"]["pad_fraction"] == 0.0
    assert long["dpo_ray 2 workers, length-grouped"]["pad_fraction"] > 0 and result["long"]["packed_vs_grouped"] > 0
    assert all(0 <= a["step_peak_variation"] < 1 and a["micro_batch_tokens_max"] > 0 for a in long.values())
    uniform = result["uniform"]  # issue 16: one worker, no resource settings
    ours = next(a for a in uniform["arms"] if a["arm"] == "dpo_ray 1 worker, defaults")
    cpus = os.cpu_count()  # Ray's CPUs on this one node
    assert ours["auto"] == f"train.cpus_per_worker={cpus} ({cpus} CPUs on the node for 1 worker); train.zero_stage=0 (1 rank: ZeRO would partition nothing)"
    assert ours["steady_pairs_per_second"] > 0
    assert "vs_trl_default" not in uniform  # its TRL arms are the full plan's (the same ratios_to_trl as above)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="parity needs TRL (the dev extra installs it)")
def test_parity_bench_smoke(tmp_path: Path) -> None:
    result = _smoke("parity.py", tmp_path, timeout=600)
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


@pytest.mark.slow
def test_startup_bench_smoke(tmp_path: Path) -> None:
    result = _smoke("startup.py", tmp_path, timeout=600)
    rows = {r["arm"]: r for r in result["timeline"]}
    assert set(rows) == {"dpo_ray cold", "dpo_ray warm"}  # TRL's start means nothing in one process: full runs only
    phases = [name for name, _ in _bench("startup").PHASES]
    for arm, r in rows.items():  # the phases run from the launch to the end of step 1, in order
        assert all(r[p] >= 0 for p in phases), arm
        assert abs(sum(r[p] for p in phases) - r["seconds_to_first_step"]) < 0.1, arm
    assert rows["dpo_ray warm"]["reference"] < rows["dpo_ray cold"]["reference"]  # the warm run read the cache
    (floor,) = result["ray_floor"]  # bench/ray_floor.py: a no-op TorchTrainer's worker group reached its loop
    assert 0 < floor["worker_start"] <= floor["seconds_to_loop"] and floor["ray_init"] >= 0  # in one process: no imports, Ray up
    assert "floor_vs_trl" not in result["ratios"][0]  # TRL ran in the full plan only


def test_plots_draw_every_committed_result(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "plots.py"), "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.name for p in tmp_path.glob("*.png")} == {f"{name}.png" for name in (
        "reference", "padding", "memory", "data", "sweep", "throughput", "parity", "mfu", "startup")}
    assert all(p.stat().st_size > 10_000 for p in tmp_path.glob("*.png"))


def test_smoke_plans_name_the_full_benches_arms() -> None:
    """Each bench's full plan is what its committed results measured; its smoke plan a part of it that
    still runs each arm function (dpo_ray cold and warm, 1 and 2 workers, TRL default and precompute)."""
    throughput, committed = _bench("throughput"), _committed("throughput")
    assert throughput.arm_plan(smoke=False, has_trl=True) == {
        "varying": [a["arm"] for a in committed["arms"]], "uniform": [a["arm"] for a in committed["uniform"]["arms"]],
        "long": [a["arm"] for a in committed["long"]["arms"]]}
    long_smoke = ["dpo_ray 2 workers, length-grouped", "dpo_ray 2 workers, token budget + packed"]
    assert throughput.arm_plan(smoke=True, has_trl=True) == {
        "varying": ["dpo_ray 2 workers", "TRL default", "TRL precompute_ref_log_probs=True"],
        "uniform": ["dpo_ray 1 worker, defaults"], "long": long_smoke}
    assert throughput.arm_plan(smoke=True, has_trl=False) == {"varying": ["dpo_ray 2 workers"], "uniform": ["dpo_ray 1 worker, defaults"],
                                                              "long": long_smoke}
    sweep, committed = _bench("sweep").arm_configs, _committed("sweep")
    assert {arm: sorted(c) for arm, c in sweep(smoke=False).items()} == {
        arm: sorted((r["beta"], r["learning_rate"]) for r in committed["runs"] if r["arm"] == arm) for arm in ("sweep", "separate", "trl")}
    assert len(sweep(smoke=False)["sweep"]) == 8 and len(sweep(smoke=True)["sweep"]) == 2
    assert sweep(smoke=True)["separate"] == sweep(smoke=True)["trl"] == sweep(smoke=True)["sweep"][:1]
    memory = _bench("memory").run_plan
    assert memory(smoke=False) == [(r["zero_stage"], r["workers"]) for r in _committed("memory")["runs"]]
    padding = _bench("padding").data_plan
    assert padding(smoke=False) == list(dict.fromkeys(r["data"] for r in _committed("padding")["runs"]))
    data, committed = _bench("data").measurement_plan(False, 100_000, 400_000), _committed("data")
    assert data == {s: [(r["pairs"], r["cpus"], r["cache"]) for r in committed[s]] for s in data}
    assert len({m for ms in data.values() for m in ms}) == 5  # the smoke's: 3 (test_data_bench_smoke)


def test_gpu_check_smoke(tmp_path: Path) -> None:
    """bench/gpu_check.sh --smoke (issue 18's GPU check on CPU, so it never rots): every row is in the
    table; the rows CPU can run ran (objective padded and packed, ZeRO-2 and ZeRO-3 engines, reference scorer)
    with finite positive figures; flash-attention (both rows) and the GPU quickstart say why they were skipped."""
    proc = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), "--smoke", "--out", str(tmp_path), "--peak-tflops", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "GPU_CHECK_WHEELS": str(tmp_path / "no-wheels")})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    titles = _bench("gpu_check").ROWS
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    rows = result["rows"]
    assert list(rows) == list(titles) and result["smoke"] is True
    ran = {"objective_sdpa", "packed_sdpa", "zero2", "zero3", "reference"}
    assert {name for name, r in rows.items() if r["status"] == "ok"} == ran
    for name in ran:
        figures = [rows[name][k] for k in ("pairs_per_s", "tokens_per_s", "peak_mib", "mfu")]
        assert all(math.isfinite(v) and v > 0 for v in figures), (name, figures)
        assert rows[name]["tokens_per_s"] > rows[name]["pairs_per_s"]
    assert rows["objective_flash"]["status"] == rows["packed_flash"]["status"] == rows["quickstart"]["status"] == "skipped"
    packed_diff = float(rows["packed_sdpa"]["note"].rsplit("max |diff| ", 1)[1])
    assert packed_diff < 1e-4  # fp32 on CPU: packed log-probs are the padded ones
    table = (tmp_path / "gpu_check.md").read_text()
    assert table == proc.stdout  # the table printed is the table written
    lines = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| row ")]
    assert [line.split(" | ")[0].removeprefix("| ") for line in lines] == list(titles.values())
    assert sum("| skipped: " in line for line in lines) == 3 and "smoke run on CPU, of no performance meaning" in table
