"""GPU check (issue 18): one table of figures measured with dpo_ray's own training and scoring code.

bash bench/gpu_check.sh [--out DIR]   one GPU: a 0.47B Llama built from a config (never downloaded), bf16
bash bench/gpu_check.sh --smoke       CPU: a 2-layer, 64-wide Llama in float32, 2 timed steps (a test runs it)

Rows, each measured or printed as 'skipped: <why>' / 'failed: <why>':
- objective, sdpa / flash_attention_2: batch_objective (dpo_ray/train/objective.py) forward + backward on
  the plain model, no optimizer; flash only where `flash_attn` imports. Packed: the same with each batch's
  sequences in one row (train.padding_free; flash runs it as separate sequences, sdpa through a block
  mask), its note the largest difference of its log-probs from the padded batch's.
- ZeRO-2 / ZeRO-3 engine: deepspeed.initialize with build_ds_config (dpo_ray/train/ds_config.py) and a
  torch AdamW, as train/loop.py builds it; forward, engine.backward, engine.step; one process, NCCL (gloo
  with DS_ACCELERATOR=cpu in smoke mode). Only where deepspeed imports.
- reference scorer: ReferenceScorer (dpo_ray/reference/scorer.py) over the same model saved to disk,
  forward only, its default rows_per_forward.
- quickstart (Ray): pipelines/dpo.py with the quickstart config, train.use_gpu=true, 1 worker, the
  reference actor on the GPU; its metrics.json. Only on a GPU and where ray imports.
Columns: pairs/s and tokens/s over the timed steps after the warm-up (synthetic pairs of fixed length:
no padding); peak memory (torch.cuda.max_memory_allocated on GPU, the process's peak RSS on CPU);
MFU = 6 (training) or 2 (forward only) x parameters x tokens/s over the device's dense bf16 peak
(PEAK_TFLOPS, by device name; 'unknown' otherwise), counted as bench/mfu.py counts: attention's
score and value FLOPs are left out, so the figure is conservative.
With --isolate (the default on GPU) each row runs in its own process: one row's CUDA error, hang or
out-of-memory cannot take the others with it, and each row's peak memory is its own.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import math
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dpo_ray.config import LossConfig, TrainConfig  # noqa: E402
from dpo_ray.reference.scorer import ReferenceScorer  # noqa: E402
from dpo_ray.toy import make_preference_rows, train_tokenizer  # noqa: E402
from dpo_ray.train.ds_config import build_ds_config  # noqa: E402
from dpo_ray.train.objective import REF_COLUMNS, batch_objective  # noqa: E402

PEAK_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0))
"""Dense bf16 tensor-core peaks from NVIDIA's data sheets (H100 SXM and H200 989, H100 PCIe 756, A100 312);
the first name found in torch.cuda.get_device_name() wins."""
ROWS = {
    "objective_sdpa": "objective fwd+bwd, sdpa",
    "objective_flash": "objective fwd+bwd, flash_attention_2",
    "packed_flash": "objective fwd+bwd packed (padding_free), flash_attention_2",
    "zero2": "DeepSpeed ZeRO-2 engine step",
    "zero3": "DeepSpeed ZeRO-3 engine step",
    "reference": "reference scorer (forward)",
    "quickstart": "quickstart via Ray, train.use_gpu=true",
    "packed_sdpa": "objective fwd+bwd packed (padding_free), sdpa",
}
"""Run in this order within the check's time budget: packed flash-attention, the only GPU evidence for
packing, before the engines; packed sdpa (a dense block mask) last."""


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    prompt: int
    completion: int
    pairs: int
    """Pairs per step (2 x pairs sequences of prompt + completion tokens)."""
    warmup: int
    steps: int


FULL = Shape(hidden=1024, layers=24, heads=16, intermediate=4096, vocab=32000, prompt=128, completion=384,
             pairs=8, warmup=3, steps=10)
SMOKE = Shape(hidden=64, layers=2, heads=4, intermediate=256, vocab=384, prompt=16, completion=24,
              pairs=4, warmup=1, steps=2)


@dataclass(frozen=True)
class Env:
    shape: Shape
    device: torch.device
    dtype: torch.dtype
    peak_flops: float | None
    out: Path
    """The table, the rows' logs."""
    work: Path
    """Scratch (the saved reference model, the quickstart's output and caches), removed at the end."""
    smoke: bool


def model_config(shape: Shape) -> LlamaConfig:
    """Llama-shaped (Qwen2 is the same block with qkv biases); untied head, as Llama 2/3 and Qwen2.5-1.5B+."""
    return LlamaConfig(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.heads,
        max_position_embeddings=shape.prompt + shape.completion, tie_word_embeddings=False,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )


def build_model(env: Env, attn: str) -> PreTrainedModel:
    torch.manual_seed(0)
    with env.device:  # initialised on the device: no 0.47B-parameter CPU init and copy
        return AutoModelForCausalLM.from_config(model_config(env.shape), dtype=env.dtype, attn_implementation=attn)


def pair_batch(shape: Shape, seed: int, pairs: int | None = None) -> dict[str, np.ndarray]:
    """Random token pairs of fixed lengths (no padding) with zero reference columns, as the cache holds them."""
    rng, n = np.random.default_rng(seed), pairs or shape.pairs
    batch = {"prompt_ids": rng.integers(3, shape.vocab, (n, shape.prompt)),
             "chosen_ids": rng.integers(3, shape.vocab, (n, shape.completion)),
             "rejected_ids": rng.integers(3, shape.vocab, (n, shape.completion))}
    return {**batch, **{k: np.zeros(n, dtype=np.float32) for k in REF_COLUMNS}}


def peak_mib(env: Env) -> float:
    if env.device.type == "cuda":
        return torch.cuda.max_memory_allocated(env.device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(env: Env, step: Callable[[int], int], params: int, flops_per_param_token: int, pairs_per_step: int,
            note: str = "") -> dict[str, Any]:
    """Warm-up steps, then the timed ones; ``step(i)`` returns the real tokens it processed."""
    sync = (lambda: torch.cuda.synchronize(env.device)) if env.device.type == "cuda" else (lambda: None)
    for i in range(env.shape.warmup):
        step(i)
    sync()
    start, tokens = time.perf_counter(), 0
    for i in range(env.shape.steps):
        tokens += step(env.shape.warmup + i)
    sync()
    seconds = time.perf_counter() - start
    achieved = flops_per_param_token * params * tokens / seconds
    return {"status": "ok", "pairs_per_s": pairs_per_step * env.shape.steps / seconds, "tokens_per_s": tokens / seconds,
            "peak_mib": peak_mib(env), "mfu": achieved / env.peak_flops if env.peak_flops else None,
            "params": params, "timed_seconds": seconds, "note": note}


def skipped(why: str) -> dict[str, Any]:
    return {"status": "skipped", "why": why}


def row_objective(env: Env, attn: str, packed: bool = False) -> dict[str, Any]:
    """The DPO objective's forward and backward; ``packed``: each batch's sequences in one row (train.padding_free),
    and the note says how far its log-probs are from the same batch's padded ones."""
    if attn == "flash_attention_2":
        if env.device.type != "cuda":
            return skipped("flash_attention_2 needs a CUDA device")
        try:
            import flash_attn  # noqa: F401
        except ImportError as err:
            return skipped(f"flash_attn does not import ({err})")
    model, loss = build_model(env, attn), LossConfig()
    params = sum(p.numel() for p in model.parameters())

    def step(i: int) -> int:
        out = batch_objective(model, pair_batch(env.shape, i), loss, pad_id=0, device=env.device, padding_free=packed)
        out.result.losses.mean().backward()
        model.zero_grad(set_to_none=True)
        return out.num_tokens

    note = f"{str(env.dtype).removeprefix('torch.')} params and grads, no optimizer"
    if packed:
        with torch.no_grad():
            logps = [batch_objective(model, pair_batch(env.shape, 0), loss, pad_id=0, device=env.device,
                                     padding_free=free).stats.logps.float() for free in (False, True)]
        note += f"; packed vs padded log-probs: max |diff| {float((logps[0] - logps[1]).abs().max()):.3g}"
    return measure(env, step, params, 6, env.shape.pairs, note=note)


def import_deepspeed(env: Env) -> Any:
    """DeepSpeed for this device, with torch.distributed up as a one-rank group (NCCL, gloo on CPU)."""
    os.environ["DS_ACCELERATOR"] = "cuda" if env.device.type == "cuda" else "cpu"  # before its first get_accelerator()
    import deepspeed
    import deepspeed.ops

    if env.device.type == "cpu":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # as train/loop.py: no JIT shm-comm build
    if not torch.distributed.is_initialized():
        with socket.socket() as s:  # a free port for the one-rank rendezvous
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        deepspeed.init_distributed(dist_backend="nccl" if env.device.type == "cuda" else "gloo")
    return deepspeed


def row_zero(env: Env, stage: int) -> dict[str, Any]:
    try:
        deepspeed = import_deepspeed(env)
    except ImportError as err:
        return skipped(f"deepspeed does not import ({err})")
    gpu = env.device.type == "cuda"
    train = TrainConfig(use_gpu=gpu, bf16=gpu, zero_stage=stage, num_workers=1, batch_size=env.shape.pairs,
                        micro_batch_size=env.shape.pairs)
    model, loss = build_model(env, "sdpa"), LossConfig()
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)  # as train/loop.py: no JIT-built FusedAdam
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=build_ds_config(train, env.shape.hidden))

    def step(i: int) -> int:
        out = batch_objective(engine, pair_batch(env.shape, i), loss, pad_id=0, device=env.device)
        engine.backward(out.result.losses.mean())
        engine.step()
        return out.num_tokens

    result = measure(env, step, params, 6, env.shape.pairs,
                     note=("bf16 on, fp32 master weights and AdamW states" if gpu else "float32") + ", 1 rank")
    engine.destroy()
    return result


def row_reference(env: Env) -> dict[str, Any]:
    model_dir = env.work / "reference-model"
    model = build_model(env, "sdpa")
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(model_dir)
    train_tokenizer([r["prompt"] + r["chosen"] for r in make_preference_rows(64)]).save_pretrained(model_dir)
    del model
    gc.collect()
    if env.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(env.device)
    scorer = ReferenceScorer(str(model_dir), None, dtype="auto", use_gpu=env.device.type == "cuda")
    per_call = 4 * env.shape.pairs  # pairs per scoring call (reference.batch_size), rows_per_forward at its default

    def step(i: int) -> int:
        return int(scorer(pair_batch(env.shape, i, per_call))["ref_tokens"].sum())

    return measure(env, step, params, 2, per_call,
                   note=f"dtype auto ({str(scorer.model.dtype).removeprefix('torch.')}), {per_call} pairs a call, "
                        f"{scorer.rows_per_forward} rows a forward, load not timed")


def row_quickstart(env: Env) -> dict[str, Any]:
    if env.smoke or env.device.type != "cuda":
        return skipped("needs a GPU (train.use_gpu=true); the CPU quickstart is bench/quickstart.py")
    probe = subprocess.run([sys.executable, "-c", "import ray, ray.train, ray.data, deepspeed"], capture_output=True, text=True)
    if probe.returncode != 0:
        return skipped(f"ray/deepspeed do not import ({(probe.stderr.strip().splitlines() or ['no message'])[-1]})")
    out = env.work / "quickstart"
    log = env.out / "quickstart.log"
    cmd = [sys.executable, "pipelines/dpo.py", "--config", "pipelines/configs/quickstart.yaml", "train.use_gpu=true",
           "train.num_workers=1", "reference.num_gpus_per_actor=1", "train.report_to=[]", f"output_dir={out}",
           f"data.cache_dir={env.work / 'cache-tok'}", f"reference.cache_dir={env.work / 'cache-ref'}"]
    start = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, timeout=210)  # inside the row's 240 s
    if proc.returncode != 0:
        return {"status": "failed", "why": f"pipelines/dpo.py exited {proc.returncode}; see {log}"}
    m = json.loads((out / "metrics.json").read_text())
    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(REPO / "pipelines/assets/tiny-llama").parameters())
    tokens = m["perf/tokens_per_second"]
    return {"status": "ok", "pairs_per_s": m["perf/pairs_per_second"], "tokens_per_s": tokens,
            "peak_mib": m["perf/peak_memory_mib"], "mfu": 6 * params * tokens / env.peak_flops if env.peak_flops else None,
            "params": params, "timed_seconds": time.perf_counter() - start,
            "note": "whole run's perf/pairs_per_second (evals included), 1 worker, tiny Llama"}


RUNNERS: dict[str, Callable[[Env], dict[str, Any]]] = {
    "objective_sdpa": lambda env: row_objective(env, "sdpa"),
    "objective_flash": lambda env: row_objective(env, "flash_attention_2"),
    "packed_sdpa": lambda env: row_objective(env, "sdpa", packed=True),
    "packed_flash": lambda env: row_objective(env, "flash_attention_2", packed=True),
    "zero2": lambda env: row_zero(env, 2),
    "zero3": lambda env: row_zero(env, 3),
    "reference": row_reference,
    "quickstart": row_quickstart,
}


def device_peak(device: torch.device, override_tflops: float | None) -> tuple[float | None, str]:
    """(dense bf16 FLOP/s or None, the device's name)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    if override_tflops:
        return override_tflops * 1e12, name
    if device.type == "cuda":
        for key, tflops in PEAK_TFLOPS:
            if key in name:
                return tflops * 1e12, name
    return None, name


def run_isolated(name: str, argv: list[str], out: Path, timeout: int) -> dict[str, Any]:
    """One row in a fresh process (this script with --row); a crash or timeout becomes a failed row."""
    path = out / f"row-{name}.json"
    cmd = [sys.executable, __file__, *argv, "--row", name, "--row-json", str(path)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "why": f"timed out after {timeout} s"}
    (out / f"row-{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"status": "failed", "why": f"exit {proc.returncode}: {last[:200]}; log {out / f'row-{name}.log'}"}
    return json.loads(path.read_text())


def fmt(value: float | None, digits: int) -> str:
    return "unknown" if value is None else f"{value:,.{digits}f}"


def render(results: dict[str, dict[str, Any]], header: dict[str, Any]) -> str:
    lines = [f"GPU check ({'smoke run on CPU, of no performance meaning' if header['smoke'] else 'measured'}): "
             f"{header['device']}; {header['model']}; torch {header['versions']['torch']}, "
             f"transformers {header['versions']['transformers']}, deepspeed {header['versions']['deepspeed']}, "
             f"ray {header['versions']['ray']}; {header['date']}", "",
             "| row | pairs/s | tokens/s | peak MiB | MFU | notes |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        if r["status"] != "ok":
            lines.append(f"| {ROWS[name]} | {r['status']}: {r['why']} | | | | |")
            continue
        mfu = "unknown" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        lines.append(f"| {ROWS[name]} | {fmt(r['pairs_per_s'], 2)} | {fmt(r['tokens_per_s'], 0)} | "
                     f"{fmt(r['peak_mib'], 0)} | {mfu} | {r['note']} |")
    return "\n".join(lines) + "\n"


def versions() -> dict[str, str]:
    found = {}
    for package in ("torch", "transformers", "deepspeed", "ray", "flash-attn", "accelerate"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "absent"
    return found


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", default=os.environ.get("GPU_CHECK_SMOKE") == "1",
                        help="CPU, a tiny float32 model, 2 timed steps (also GPU_CHECK_SMOKE=1)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu_check")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {','.join(ROWS)}")
    parser.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                        help="each row in its own process (default: on GPU yes, in smoke mode no)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense peak, where PEAK_TFLOPS lacks it")
    parser.add_argument("--row-timeout", type=int, default=240, help="seconds per isolated row")
    parser.add_argument("--budget", type=int, default=450,
                        help="seconds for all isolated rows; a row that would start with under 20 s left is skipped")
    parser.add_argument("--row", choices=list(ROWS), help=argparse.SUPPRESS)  # one isolated row (run_isolated)
    parser.add_argument("--row-json", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)  # the parent's scratch dir
    args = parser.parse_args(argv)
    unknown = set(args.rows.split(",")) - set(ROWS)
    if unknown:
        parser.error(f"--rows: unknown {sorted(unknown)}; choose from {','.join(ROWS)}")
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    gpu = not args.smoke and torch.cuda.is_available()
    if not args.smoke and not gpu:
        sys.exit("bench/gpu_check.py: no CUDA device; run with --smoke on CPU")
    device = torch.device("cuda", 0) if gpu else torch.device("cpu")
    peak, device_name = device_peak(device, args.peak_tflops)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="dpo_ray-gpu-check-"))
    env = Env(shape=SMOKE if args.smoke else FULL, device=device, dtype=torch.bfloat16 if gpu else torch.float32,
              peak_flops=peak, out=args.out, work=work, smoke=args.smoke)
    if args.row:  # a child of run_isolated
        args.row_json.write_text(json.dumps(RUNNERS[args.row](env)))
        return
    isolate = gpu if args.isolate is None else args.isolate
    child_argv = [*(["--smoke"] if args.smoke else []), "--out", str(args.out), "--work", str(work),
                  *(["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else [])]
    results, deadline = {}, time.perf_counter() + args.budget
    for name in args.rows.split(","):
        start = time.perf_counter()
        left = int(deadline - start)
        if isolate and left < 20:
            results[name] = skipped(f"out of time (--budget {args.budget} s spent)")
        elif isolate:
            results[name] = run_isolated(name, child_argv, args.out, min(args.row_timeout, left))
        else:
            results[name] = RUNNERS[name](env)
        print(f"gpu_check: {name}: {results[name]['status']} in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
        gc.collect()
        if gpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
    params = sum(math.prod(s) for s in _param_shapes(env.shape))
    header = {"smoke": args.smoke, "device": device_name, "versions": versions(), "isolated": isolate,
              "date": time.strftime("%Y-%m-%d %H:%M"), "shape": asdict(env.shape), "parameters": params,
              "peak_tflops": None if peak is None else peak / 1e12,
              "model": (f"Llama from config, {params / 1e6:.1f}M parameters ({env.shape.layers} layers, hidden "
                        f"{env.shape.hidden}, vocab {env.shape.vocab}), {str(env.dtype).removeprefix('torch.')}, "
                        f"{env.shape.pairs} pairs x {env.shape.prompt}+{env.shape.completion} tokens a step, "
                        f"{env.shape.steps} timed steps after {env.shape.warmup}")}
    table = render(results, header)
    print(table, end="")
    (args.out / "gpu_check.md").write_text(table)
    (args.out / "gpu_check.json").write_text(json.dumps({**header, "rows": results}, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out / 'gpu_check.md'} and gpu_check.json", file=sys.stderr)


def _param_shapes(shape: Shape) -> list[tuple[int, ...]]:
    """Every weight of model_config(shape)'s Llama: counted without building it (the header's figure)."""
    h, f = shape.hidden, shape.intermediate
    layer = [(h, h)] * 4 + [(f, h)] * 3 + [(h,)] * 2  # q k v o; gate up down; two RMSNorms
    return [(shape.vocab, h), (shape.vocab, h), (h,)] + layer * shape.layers


if __name__ == "__main__":
    main(sys.argv[1:])
