"""The short run summary printed by the entry scripts. Pure ring: no Ray import."""

from __future__ import annotations

from typing import Any

SHOWN = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")


def _reasons(s: dict[str, Any]) -> str:
    parts = [f"{k.removeprefix('data/dropped/')} {v}" for k, v in sorted(s.items()) if k.startswith("data/dropped/")]
    parts += [f"warning {k.removeprefix('data/warnings/')} {v}" for k, v in sorted(s.items()) if k.startswith("data/warnings/")]
    return f" ({', '.join(parts)}; see data_report.json)" if parts else ""


def _reference_line(s: dict[str, Any]) -> str:
    if s["ref/skipped"]:
        return "reference  skipped: reference-free loss, no reference model loaded"
    if s["ref/cache_hit"]:
        return f"reference  cache hit ({s['ref/key']}), read in {s['ref/seconds']:.1f} s; no reference model loaded"
    return f"reference  scored in {s['ref/seconds']:.1f} s, pad fraction {s['ref/pad_fraction']:.3f}, cached as {s['ref/key']}"


def _startup_line(s: dict[str, Any]) -> list[str]:
    """Where the time before the first optimizer step went (none when step 1 ran before a resume)."""
    if "perf/job_seconds_to_first_step" not in s:
        return []
    first, ray_start, prepare = s["perf/job_seconds_to_first_step"], s["perf/ray_start_seconds"], s.get("perf/prepare_seconds", 0.0)
    return [f"startup    first step {first:.1f} s after the start: Ray {ray_start:.1f} s, data and reference {prepare:.1f} s, "
            f"workers, model load, step-0 eval and step 1 {first - ray_start - prepare:.1f} s"]


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        "== dpo_ray summary ==",
        f"data       {s['data/rows_read']} rows read, {s['data/train_pairs']} train / "
        f"{s['data/eval_pairs']} eval pairs, {s['data/rows_dropped']} dropped{_reasons(s)}",
        *([f"data       {s['data/duplicates_removed']} duplicate pairs removed (data.dedup=false keeps them)"]
          if s.get("data/duplicates_removed") else []),
        _reference_line(s),
        f"{'metric':<22}{'eval start':>12}{'eval end':>12}{'train end':>12}",
    ]
    for name in SHOWN:
        lines.append(
            f"{name:<22}{s[f'initial_eval/{name}']:>12.4f}{s[f'eval/{name}']:>12.4f}{s[f'train/{name}']:>12.4f}"
        )
    lines += [
        f"throughput {s['perf/pairs_per_second']:.1f} pairs/s, {s['perf/tokens_per_second']:.0f} tokens/s "
        f"({s['perf/num_workers']:.0f} workers, {s['perf/train_seconds']:.1f} s training, "
        f"first step after {s['perf/seconds_to_first_step']:.1f} s)",
        *_startup_line(s),
        *([f"batches    {s['perf/batching']}, pad fraction {s['perf/pad_fraction']:.3f}, token slots per micro-batch "
           f"{s['perf/micro_batch_tokens_mean']:.0f} mean, {s['perf/micro_batch_tokens_max']:.0f} max"] if "perf/batching" in s else []),
        *([f"auto       {s['auto']}"] if s.get("auto") else []),
        f"stopped    after {s['train/steps']:.0f} steps: {s['stop_reason']}",
        f"total      {s['perf/total_seconds']:.1f} s",
        f"model      {s['model_dir']}",
        *([f"ray logs   {s['ray/log_dir']} (Ray's own output; --verbose shows it on screen)"] if s.get("ray/log_dir") else []),
    ]
    return "\n".join(lines)
