"""Charts of the benchmark results: bench/results/*.json -> bench/results/plots/*.png.

python bench/plots.py [--results-dir DIR] [--out DIR]   (run_all.py calls it; report.py links the charts)
Each chart draws only figures a results file holds; a missing file is skipped with a line saying so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common import RESULTS  # noqa: E402

PLOTS = RESULTS / "plots"


def _bars(ax: Any, labels: list[str], series: dict[str, list[float]], ylabel: str) -> None:
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        xs = [x + (i - (len(series) - 1) / 2) * width for x in range(len(labels))]
        ax.bar(xs, values, width, label=name)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)


def _line_on_twin(ax: Any, values: list[float], style: str, label: str, loc: str) -> None:
    """A second series on its own y axis (from 0), over the bars' x positions."""
    twin = ax.twinx()
    twin.plot(range(len(values)), values, style, label=label)
    twin.set_ylim(0, max(values) * 1.3)
    twin.legend(fontsize=8, loc=loc)


def reference(data: dict[str, Any], ax: Any) -> None:
    runs = data["runs"]
    labels = [f"{r['data']}\n{'bucketed' if r['length_bucketing'] else 'unbucketed'}" for r in runs]
    _bars(ax, labels, {"actor pool (incl. actor start)": [r["pool_tokens_per_s"] for r in runs],
                       "bare loop": [r["bare_loop_tokens_per_s"] for r in runs]}, "real tokens / s")
    ax.set_title("Reference scoring: 1 actor vs a bare forward loop")


def padding(data: dict[str, Any], ax: Any) -> None:
    runs = data["runs"]
    labels = [f"{r['data']}\nmicro {r['micro_batch_size']}" for r in runs]
    _bars(ax, labels, {"ungrouped": [100 * r["ungrouped"] for r in runs], "length-grouped": [100 * r["grouped"] for r in runs]},
          "pad tokens, % of slots")
    ax.set_title("Train micro-batches: padding")


def memory(data: dict[str, Any], ax: Any) -> None:
    runs = data["runs"]
    labels = [f"ZeRO-{r['zero_stage']}\n{r['workers']} worker{'s' if r['workers'] > 1 else ''}" for r in runs]
    _bars(ax, labels, {"model state": [r["model_state_mib_per_worker"] for r in runs],
                       "peak RSS": [r["peak_memory_mib_per_worker"] for r in runs]}, "MiB per worker")
    ax.set_title(f"Training memory, {data['parameters'] / 1e6:.0f}M parameters")


def data_stage(data: dict[str, Any], ax: Any) -> None:
    rows = data["throughput"] + data["memory"][1:] + data["cache"][1:]
    labels = [f"{r['pairs'] // 1000}k, {r['cpus']} CPU\n{'cache hit' if r['tokenize_cache_hit'] else 'tokenize'}" for r in rows]
    _bars(ax, labels, {"pairs / s (tokenize)": [r["tokenize_pairs_per_s"] for r in rows]}, "pairs / s")
    _line_on_twin(ax, [r["peak_rss_mib"] for r in rows], "ko-", "driver peak RSS (MiB)", "lower right")
    ax.set_title("Data stage")


def sweep(data: dict[str, Any], ax: Any) -> None:
    arms = data["arms"]
    _bars(ax, [a["arm"] for a in arms], {"total wall seconds": [a["total_wall_s"] for a in arms]}, "seconds")
    ax.set_title(f"{arms[0]['runs']} (beta, lr) configs")


def throughput(data: dict[str, Any], ax: Any) -> None:
    arms = data["arms"]
    labels = [a["arm"].replace("precompute_ref_log_probs=True", "precomputed ref").replace("dpo_ray ", "dpo_ray\n")
              .replace(", no length grouping", "\nungrouped") + ("\n(warm caches)" if a.get("caches") == "warm" else "") for a in arms]
    _bars(ax, labels, {"steady pairs / s": [a["steady_pairs_per_second"] for a in arms]}, "pairs / s")
    _line_on_twin(ax, [a["seconds_to_first_step"] for a in arms], "ko", "seconds to first step", "upper center")
    ax.set_title("Training throughput, same model, data, batch and steps (CPU)")


def parity(data: dict[str, Any], ax: Any) -> None:
    rows = [r for r in data["comparison"] if r["metric"] != "eval/loss"]
    labels = [f"{r['loss']}\n{r['metric'].removeprefix('eval/rewards/')}" for r in rows]
    width = 0.35
    for i, arm in enumerate(("dpo_ray", "trl")):
        xs = [x + (i - 0.5) * width for x in range(len(rows))]
        ax.bar(xs, [r[f"{arm}_mean"] for r in rows], width, yerr=[r[f"{arm}_std"] for r in rows], capsize=4, label=arm)
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylabel("held-out value (mean, std over seeds)")
    ax.legend(fontsize=8)
    ax.set_title("Learning parity with TRL: held-out rewards after the same steps")


def mfu(data: dict[str, Any], ax: Any) -> None:
    _bars(ax, ["measured matmul peak", "dpo_ray training (6 N tokens/s)"],
          {"GFLOP/s": [data["matmul_peak_gflops"], data["achieved_gflops"]]}, "GFLOP/s")
    ax.set_title(f"MFU {100 * data['mfu']:.0f}%: {data['parameters'] / 1e6:.0f}M parameters, sequence {data['sequence_length']}, "
                 f"{data['precision']}")


def startup(data: dict[str, Any], ax: Any) -> None:
    """Each run's time to its first step as stacked phases (dpo_ray's startup/* marks); TRL's as one bar."""
    rows = data["timeline"]
    phases = [k for k in rows[0] if k not in ("label", "arm", "seconds_to_first_step")]
    labels = [f"{r['label']}: {r['arm'].replace('precompute_ref_log_probs=True', 'precompute')}" for r in rows]
    colors = plt.get_cmap("tab20").colors
    left = [0.0] * len(rows)
    for i, phase in enumerate(phases):
        widths = [r.get(phase, 0.0) for r in rows]
        ax.barh(range(len(rows)), widths, left=left, color=colors[i % len(colors)], label=phase)
        left = [a + b for a, b in zip(left, widths)]
    trl = [r["seconds_to_first_step"] if r["arm"].startswith("TRL") else 0.0 for r in rows]
    ax.barh(range(len(rows)), trl, color="0.6", label="TRL (one process)")
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds from launch to the end of step 1")
    ax.legend(fontsize=6, ncol=2, loc="lower right")
    ax.set_title("Time to first step, by phase (CPU, 2 cores)")


CHARTS: dict[str, Callable[[dict[str, Any], Any], None]] = {
    "reference": reference, "padding": padding, "memory": memory, "data": data_stage, "sweep": sweep,
    "throughput": throughput, "parity": parity, "mfu": mfu, "startup": startup,
}


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where the results JSON files are")
    parser.add_argument("--out", type=Path, default=PLOTS, help="where the PNGs go")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, draw in CHARTS.items():
        path = args.results_dir / f"{name}.json"
        if not path.exists():
            print(f"{path}: not there; run bench/{name}.py first")
            continue
        fig, ax = plt.subplots(figsize=(8, 4.5))
        draw(json.loads(path.read_text()), ax)
        fig.tight_layout()
        fig.savefig(args.out / f"{name}.png", dpi=110)
        plt.close(fig)
        print(f"wrote {args.out / f'{name}.png'}")


if __name__ == "__main__":
    main()
