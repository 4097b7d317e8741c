"""Render bench/RESULTS.md from the JSON files under bench/results/ (python bench/report.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common import RESULTS

OUT = Path(__file__).resolve().parent / "RESULTS.md"


def _table(rows: list[dict[str, Any]]) -> list[str]:
    keys = list(rows[0])
    return ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)] + [
        "| " + " | ".join(f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys) + " |" for r in rows
    ]


def _machine(m: dict[str, Any]) -> str:
    return (f"{m['date']}; {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, GPU: {m['gpu']}; "
            f"Python {m['python']}, torch {m['torch']}, ray {m['ray']}, deepspeed {m['deepspeed']}, "
            f"transformers {m['transformers']}")


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
    if m := _load("mfu"):
        rows.append((f"MFU >= 40% ({m['parameters'] / 1e6:.0f}M params, sequence {m['sequence_length']}, {m['precision']})",
                     f"{100 * m['mfu']:.1f}%", m["mfu"] >= 0.4))
    if p := _load("parity"):
        rows.append(("held-out metrics agree with TRL within noise (sigmoid, ipo, 3 seeds)",
                     f"{sum(r['agree'] for r in p['comparison'])} of {len(p['comparison'])} agree", p["all_agree"]))
    if r := _load("run_all"):
        rows.append(("`python bench/run_all.py` under 30 minutes", f"{r['total_minutes']} min", r["total_minutes"] < 30))
    if not rows:
        return []
    return ["## Targets (issues 9 and 16)", "", "| target | measured | met |", "|---|---|---|",
            *[f"| {name} | {value} | {'yes' if met else '**no**'} |" for name, value, met in rows], ""]


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
            if key in ("machine", "command"):
                continue
            if isinstance(value, list) and value and isinstance(value[0], dict):
                lines += [f"**{key}**", "", *_table(value), ""]
            elif isinstance(value, dict) and "arms" in value:  # a second setting of the same bench
                lines += [f"### {path.stem}: {key}", "", str(value.get("notes", "")), "", *_table(value["arms"]), "",
                          *[f"- {k}: {v}" for k, v in value.items() if k not in ("notes", "arms")], ""]
            elif key == "notes":
                lines += [str(value), ""]
            else:
                lines += [f"- {key}: {value}", ""]
    OUT.write_text("\n".join(lines))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
