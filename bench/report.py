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


def main() -> None:
    lines = ["# Benchmark results", "",
             "Written by `python bench/report.py` from `bench/results/*.json`; each section names its command,",
             "the machine, versions and date, and how it was measured.", ""]
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
            elif key == "notes":
                lines += [str(value), ""]
            else:
                lines += [f"- {key}: {value}", ""]
    OUT.write_text("\n".join(lines))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
