"""Model FLOPs utilisation of dpo_ray's training stage against this machine's measured matmul peak.

python bench/mfu.py [--hidden 512 --layers 12 --steps 5]   -> bench/results/mfu.json
python bench/mfu.py --smoke --results-dir /tmp/x            -> a 2-layer, 64-wide model, 3 steps, the peak of
                                                               256 and 512 matmuls (the full sizes' time is mostly n=4096)

Issue 9: achieved model FLOP/s = 6 x parameters x trained (real) tokens per second (the reference
pass does not run in dpo_ray's training stage: its log-probs come from the cache), over the peak of
a square matmul measured here in the training precision (fp32 on CPU, bf16 on a GPU) with as many
threads as the workers have CPUs (2 workers x 1 CPU: the whole 2-core machine), or one GPU's peak
times the workers. Attention's score and value FLOPs (12 x layers x hidden x sequence a token, as
PaLM's MFU counts them: 12% more here) are left out, as 6N leaves them out: the figure is conservative.
Target on CPU: >= 40% for a ~50M-parameter model at sequence length 512. Every sequence is exactly
512 tokens (long completions cut to fit), so nothing is padding.
Tokens/s is perf/steady_tokens_per_second: the steps after the first 2, measured inside the run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import ray
import torch

from common import REPO, RESULTS, scratch_dir, write_result

sys.path.insert(0, str(REPO))

from dpo_ray.config_load import load_config  # noqa: E402
from dpo_ray.modeling import load_model  # noqa: E402
from dpo_ray.run import run  # noqa: E402
from dpo_ray.toy import build_tiny_model, make_preference_rows  # noqa: E402

TARGET = 0.40
SEQ = 512
PEAK_SIZES, SMOKE_PEAK_SIZES = (1024, 2048, 4096), (256, 512)


def matmul_peak(dtype: torch.dtype, device: str, sizes: tuple[int, ...] = PEAK_SIZES, seconds: float = 2.0) -> dict[str, Any]:
    """Best FLOP/s of an n x n @ n x n matmul over ``sizes`` (2 n^3 FLOPs each), ~``seconds`` each."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    best: dict[str, Any] = {"flops_per_second": 0.0}
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)

        def timed(reps: int) -> float:
            sync()
            start = time.perf_counter()
            for _ in range(reps):
                a @ b
            sync()
            return time.perf_counter() - start

        timed(2)  # warm-up
        reps = max(3, int(seconds / (timed(3) / 3)))
        rate = 2 * n**3 * reps / timed(reps)
        if rate > best["flops_per_second"]:
            best = {"flops_per_second": rate, "n": n}
    return best


def long_rows(n: int) -> list[dict[str, str]]:
    """Quickstart pairs whose completions run past SEQ tokens: every sequence is cut to exactly SEQ."""
    filler = " and so on" * (SEQ // 2)
    return [{**r, "chosen": r["chosen"] + filler, "rejected": r["rejected"] + filler} for r in make_preference_rows(n, seed=0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per step (2 workers x micro-batch 2)")
    parser.add_argument("--workers", type=int, default=None, help="default: 2 on CPU (1 CPU each), 1 on a GPU machine")
    parser.add_argument("--smoke", action="store_true", help="a 2-layer, 64-wide model, 3 steps")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.smoke:
        args.hidden, args.layers, args.steps = 64, 2, 3
    use_gpu = torch.cuda.is_available()
    args.workers = args.workers or (1 if use_gpu else 2)
    dtype = torch.bfloat16 if use_gpu else torch.float32
    if not use_gpu:
        torch.set_num_threads(args.workers)  # the cores the workers use (1 CPU each)
    peak = matmul_peak(dtype, "cuda" if use_gpu else "cpu", SMOKE_PEAK_SIZES if args.smoke else PEAK_SIZES, 0.5 if args.smoke else 2.0)
    if use_gpu:  # one GPU per worker: the peak of all of them
        peak["flops_per_second"] *= args.workers
    ray.init(address="local", num_cpus=max(args.workers, 2), log_to_driver=False, include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    work = scratch_dir("bench-mfu-")
    pairs = int(args.steps * args.batch_size / 0.9) + 8  # every train pair once, eval fraction 0.05 held out
    rows = long_rows(pairs)
    model_dir = build_tiny_model(work / "model", rows, hidden_size=args.hidden, num_layers=args.layers,
                                 num_heads=max(args.hidden // 64, 1), max_positions=SEQ)
    params = sum(p.numel() for p in load_model(str(model_dir)).parameters())
    data = work / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, [
        f"model.name_or_path={model_dir}", f"data.path={data}", f"data.max_length={SEQ}", "data.eval_fraction=0.05",
        "loss.type=sigmoid", f"train.max_steps={args.steps}", f"train.batch_size={args.batch_size}",
        f"train.micro_batch_size={args.batch_size // args.workers}", f"train.num_workers={args.workers}",
        "train.cpus_per_worker=1", f"train.use_gpu={str(use_gpu).lower()}", f"train.bf16={str(use_gpu).lower()}",
        f"reference.num_gpus_per_actor={1 if use_gpu else 0}",
        f"train.eval_every={args.steps}", "train.logging_steps=1", "train.learning_rate=1e-5", "train.report_to=[]",
        f"output_dir={work / 'out'}", f"data.cache_dir={work / 'cache'}", f"reference.cache_dir={work / 'refcache'}",
    ])
    m = run(cfg)
    tokens_per_second = m["perf/steady_tokens_per_second"]
    achieved = 6 * params * tokens_per_second
    mfu = achieved / peak["flops_per_second"]
    result = {
        "parameters": params, "sequence_length": SEQ, "workers": args.workers, "batch_size": args.batch_size,
        "steps": args.steps, "precision": str(dtype).removeprefix("torch."),
        "matmul_peak_gflops": round(peak["flops_per_second"] / 1e9, 1), "matmul_peak_n": peak["n"],
        "matmul_threads": torch.get_num_threads(),
        "steady_tokens_per_second": round(tokens_per_second, 1), "steady_pairs_per_second": round(m["perf/steady_pairs_per_second"], 3),
        "pad_fraction": round(m["perf/pad_fraction"], 4),
        "achieved_gflops": round(achieved / 1e9, 1), "mfu": round(mfu, 3), "target_met": mfu >= TARGET,
    }
    print(result, flush=True)
    path = write_result("mfu", {
        "command": "python bench/mfu.py " + ("--smoke" if args.smoke else f"--hidden {args.hidden} --layers {args.layers} --steps {args.steps}"),
        "notes": (f"Llama built from config ({params / 1e6:.1f}M parameters, hidden {args.hidden}, {args.layers} layers), "
                  f"{args.workers} workers x 1 {'GPU' if use_gpu else 'CPU'}, ZeRO-2, {args.batch_size} pairs a step. "
                  + "Issue 9: " + __doc__.split("Issue 9: ", 1)[1].replace("\n", " ").strip()),
        **result,
    }, args.results_dir)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
