"""Render bench/RESULTS.md from the JSON files under bench/results/ (python bench/report.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common import RESULTS

OUT = Path(__file__).resolve().parent / "RESULTS.md"


def _table(rows: list[dict[str, Any]]) -> list[str]:
    keys = list(dict.fromkeys(k for r in rows for k in r))  # every row's columns: a later run may add one
    return ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)] + [
        "| " + " | ".join(f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys) + " |" for r in rows
    ]


def _machine(m: dict[str, Any]) -> str:
    return (f"{m['date']}; {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, GPU: {m['gpu']}; "
            f"Python {m['python']}, torch {m['torch']}, ray {m['ray']}, deepspeed {m['deepspeed']}, "
            f"transformers {m['transformers']}" + (f", trl {m['trl']}" if "trl" in m else ""))


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _targets() -> list[str]:
    """Issue 9's targets against the figures the results files hold (a missing file: no row)."""
    rows = []
    if (t := _load("throughput")) and "vs_trl_default" in t:
        rows += [("training pairs/s >= 1.3x TRL default", f"{t['vs_trl_default']:.2f}x", t["vs_trl_default"] >= 1.3),
                 ("training pairs/s >= 1.1x TRL with precomputed reference", f"{t['vs_trl_precompute']:.2f}x",
                  t["vs_trl_precompute"] >= 1.1)]
    if (t := _load("throughput")) and "vs_trl_default" in t.get("uniform", {}):
        u = t["uniform"]
        rows += [("issue 16, uniform short pairs, 1 worker, defaults: >= 1.3x TRL default", f"{u['vs_trl_default']:.2f}x",
                  u["vs_trl_default"] >= 1.3),
                 ("issue 16, same setting: >= 1.0x TRL with precomputed reference", f"{u['vs_trl_precompute']:.2f}x",
                  u["vs_trl_precompute"] >= 1.0)]
    if (t := _load("throughput")) and "budget_vs_grouped" in t.get("long", {}):
        long = t["long"]
        budget = next(a for a in long["arms"] if a["arm"].startswith("dpo_ray 2 workers, token budget at"))
        variation, speed = (long.get("median_budget_step_peak_variation", budget["step_peak_variation"]),
                            long.get("median_budget_vs_grouped", long["budget_vs_grouped"]))
        runs = len(long.get("repeats", [])) or 1
        each = "" if runs == 1 else (f" (median of {runs} runs: "
                                     + ", ".join(f"{100 * r['budget_step_peak_variation']:.1f}%" for r in long["repeats"]) + ")")
        rows += [("issue 20, long conversations, token budget at the length-grouped arm's memory cap: step peak memory "
                  "varies < 15%", f"{100 * variation:.1f}%{each}", variation < 0.15),
                 ("issue 20, same arm: pairs/s >= 1.0x length-grouped", f"{speed:.2f}x" + ("" if runs == 1 else (
                     f" (median of {runs} runs: " + ", ".join(f"{r['budget_vs_grouped']:.2f}x" for r in long["repeats"]) + ")")),
                  speed >= 1.0)]
        if "tight_vs_grouped" in long:
            rows.append(("issue 20, a tighter budget (8192 slots): pairs/s >= 1.0x length-grouped (reported beside it, at "
                         f"{long['tight_peak_vs_grouped']:.2f}x the peak memory)", f"{long['tight_vs_grouped']:.2f}x",
                         long["tight_vs_grouped"] >= 1.0))
    if m := _load("mfu"):
        rows.append((f"MFU >= 40% ({m['parameters'] / 1e6:.0f}M params, sequence {m['sequence_length']}, {m['precision']})",
                     f"{100 * m['mfu']:.1f}%", m["mfu"] >= 0.4))
    if p := _load("parity"):
        rows.append(("held-out metrics agree with TRL within noise (sigmoid, ipo, 3 seeds)",
                     f"{sum(r['agree'] for r in p['comparison'])} of {len(p['comparison'])} agree", p["all_agree"]))
    if (s := _load("startup")) and (after := s["labels"].get("after", {})).get("warm_vs_trl"):
        rows += [("issue 19: warm time to first step <= 1.5x TRL default's", f"{after['warm_vs_trl']:.2f}x", after["warm_vs_trl"] <= 1.5),
                 ("issue 19: cold time to first step <= 3x TRL default's", f"{after['cold_vs_trl']:.2f}x", after["cold_vs_trl"] <= 3.0)]
    if (w := _load("sweep")) and "trl_over_sweep" in w:
        rows.append(("issue 19: the 8-config sweep <= 1.0x eight TRL runs' wall time (sweep bench setting)",
                     f"{1 / w['trl_over_sweep']:.2f}x", 1 / w["trl_over_sweep"] <= 1.0))
    if w := _load("sweep_throughput"):
        rows.append(("issue 19: eight TRL runs' wall time >= 1.4x the sweep's (throughput bench's model and data)",
                     f"{w['trl_over_sweep']:.2f}x", w["target_met"]))
    if o := _load("online"):
        scores = " -> ".join(f"{r['heldout_mean_score']:.2f}" for r in o["rounds"])
        rows += [("issue 22: the online example under 10 minutes on the 2-core CPU machine", f"{o['wall_s'] / 60:.1f} min",
                  o["wall_s"] < 600),
                 ("issue 22: held-out mean score rises every round", scores, o["score_rises_every_round"]),
                 ("issue 22: win rate vs the initial model > 0.5 after the last round",
                  f"{o['final_win_rate_vs_initial']:.3f}", o["final_win_rate_vs_initial"] > 0.5)]
    if r := _load("run_all"):
        rows.append(("`python bench/run_all.py` under 30 minutes", f"{r['total_minutes']} min", r["total_minutes"] < 30))
    if not rows:
        return []
    return ["## Targets (issues 9, 16, 19, 20 and 22)", "", "| target | measured | met |", "|---|---|---|",
            *[f"| {name} | {value} | {'yes' if met else '**no**'} |" for name, value, met in rows], ""]


def _gpu_check() -> list[str]:
    """Issue 18's GPU check: how to run it, the measured table where a GPU run wrote one
    (bench/results/gpu_check/gpu_check.md), and the CPU smoke table (bench/results/gpu_check_smoke.md)."""
    measured, smoke = RESULTS / "gpu_check" / "gpu_check.md", RESULTS / "gpu_check_smoke.md"
    lines = ["## GPU check (issue 18)", "",
             "`bash bench/gpu_check.sh` on a one-GPU machine (CUDA torch, transformers, peft; Ray and DeepSpeed are",
             "optional) prints one table and writes it to `bench/results/gpu_check/gpu_check.md` (and `.json`): the DPO",
             "objective's bf16 forward + backward (`batch_objective`) on a 0.47B-parameter Llama built from a config",
             "(sdpa, and flash_attention_2 where `flash_attn` imports), ZeRO-2 and ZeRO-3 engine steps on one GPU",
             "(`build_ds_config`, torch AdamW, NCCL), the reference scorer, and the quickstart through Ray with",
             "`train.use_gpu=true`: pairs/s, tokens/s, peak GPU memory and MFU (6 or 2 x parameters x tokens/s over",
             "the dense bf16 peak: H100/H200 989, A100 312 TFLOPS; 'unknown' for other devices). A row whose",
             "dependency is missing prints `skipped: <why>`; each row runs in its own process (a crash or hang is",
             "a failed row) and all of them within 8 minutes. `bash bench/gpu_check.sh --smoke` runs it on CPU",
             "(`tests/e2e/test_bench_smoke.py::test_gpu_check_smoke`).", "",
             "Without network, Ray and DeepSpeed travel as wheels: `bash bench/gpu_check.sh --pack wheels` (on a",
             "machine with network) fills `wheels/`, and the check installs each wheel not yet installed with",
             "`pip install --no-index --no-deps --target` first. Sizes (pip download, 2026-12-01): ray 2.60.0",
             "manylinux x86_64 75.6 MiB (cp311 and cp312), over one device call's 64 MiB, so `--pack` splits it",
             "into 60 MiB parts that travel in two calls to a warm machine and are joined before installing;",
             "deepspeed 0.19.8 is a 1.9 MiB sdist, 2.1 MiB as the pure-Python wheel `--pack` builds",
             "(`DS_BUILD_OPS=0`); its small dependencies (hjson, py-cpuinfo, msgpack, ninja, einops, pydantic",
             "and pydantic-core, annotated-types, typing-inspection) 3.4 MiB together. DeepSpeed and its",
             "dependencies fit one call; Ray does not.", ""]
    if measured.exists() and "smoke run" not in measured.read_text():
        lines += ["Measured:", "", measured.read_text().strip(), ""]
    else:
        lines += ["**No GPU has run it yet** (none was lent to the session that wrote it): nothing here is a GPU figure.", ""]
    if smoke.exists():
        lines += ["The CPU smoke mode's table, a smoke run of no performance meaning (it shows the rows run):", "",
                  smoke.read_text().strip(), ""]
    return lines


def main() -> None:
    lines = ["# Benchmark results", "",
             "Written by `python bench/report.py` from `bench/results/*.json`; each section names its command,",
             "the machine, versions and date, and how it was measured. Where a short run's time goes, and what",
             "was fixed to bring run_all under 30 minutes: [PROFILE.md](PROFILE.md).", "", *_targets()]
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        lines += [f"## {path.stem}", "", f"Machine: {_machine(data['machine'])}", ""]
        if (RESULTS / "plots" / f"{path.stem}.png").exists():  # bench/plots.py
            lines += [f"![{path.stem}](results/plots/{path.stem}.png)", ""]
        if "command" in data:
            lines += [f"Command: `{data['command']}`", ""]
        for key, value in data.items():
            if key in ("machine", "command", "labels"):  # labels: the raw runs behind startup's tables
                continue
            if isinstance(value, list) and value and isinstance(value[0], dict):
                lines += [f"**{key}**", "", *_table(value), ""]
            elif isinstance(value, dict) and "arms" in value:  # a second setting of the same bench
                lines += [f"### {path.stem}: {key}", "",
                          *([f"Machine (this setting, run alone): {_machine(value['machine'])}", ""] if "machine" in value else []),
                          str(value.get("notes", "")), "", *_table(value["arms"]), "",
                          *([f"**{key}: repeats**", "", *_table(value["repeats"]), ""] if value.get("repeats") else []),
                          *[f"- {k}: {v}" for k, v in value.items() if k not in ("notes", "arms", "repeats", "machine")], ""]
            elif key == "notes":
                lines += [str(value), ""]
            else:
                lines += [f"- {key}: {value}", ""]
    lines += _gpu_check()
    OUT.write_text("\n".join(lines))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
