"""train_loop_per_worker: one DeepSpeed rank of the DPO trainer.

Worker ring: the only module that touches ray.train.get_dataset_shard, report and the context.
Everything arrives through ``train_loop_config``; the typed config is rebuilt on the first line.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from transformers import get_scheduler

from dpo_ray.config import Config, from_dict
from dpo_ray.ds_config import build_ds_config
from dpo_ray.metrics import SUM_FIELDS, finalize, metric_sums
from dpo_ray.modeling import load_model, load_tokenizer, resolve_dtype
from dpo_ray.objective import batch_objective
from dpo_ray.stopping import Stopper

SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    cfg = from_dict(loop_config["config"])
    steps = int(loop_config["total_steps"])
    deepspeed = _import_deepspeed(cfg.train.use_gpu)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.train.cpus_per_worker)
    torch.manual_seed(cfg.train.seed)
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    loop_start = time.perf_counter()

    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.revision)
    dtype = resolve_dtype(cfg.model.dtype, on_gpu=cfg.train.use_gpu, bf16=cfg.train.bf16)
    model = load_model(cfg.model.name_or_path, revision=cfg.model.revision, dtype=dtype,
                       disable_dropout=cfg.model.disable_dropout)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    # A torch optimizer: DeepSpeed then JIT-builds no FusedAdam (RAY-DEEPSPEED-NOTES.md).
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay)
    scheduler = get_scheduler(SCHEDULERS[cfg.train.lr_scheduler], optimizer,
                              num_warmup_steps=cfg.train.warmup_steps(steps), num_training_steps=steps)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=build_ds_config(cfg.train)
    )

    train_batches = _micro_batches(ray.train.get_dataset_shard("train"), cfg, rank)
    eval_shard = ray.train.get_dataset_shard("eval")
    history: list[dict[str, float]] = []

    def log(metrics: dict[str, float], step: int) -> None:
        row = {"step": float(step), **metrics}
        history.append(row)
        ray.train.report(row)  # a barrier: every rank reports on the same steps

    stopper = Stopper(cfg.train)
    stop_reason = "epochs" if cfg.train.epochs is not None else "max_steps"
    log(_evaluate(engine, eval_shard, cfg, tokenizer.pad_token_id, device), step=0)
    train_seconds, pairs_done, tokens_done, first_step_at = 0.0, 0, 0, 0.0
    for step in range(1, steps + 1):
        t0 = _now(device)
        sums, tokens = _train_step(engine, train_batches, cfg, tokenizer.pad_token_id, device)
        dist.all_reduce(sums)
        dist.all_reduce(tokens)
        step_seconds = _now(device) - t0
        train_seconds += step_seconds
        pairs_done += cfg.train.batch_size
        tokens_done += int(tokens.item())
        if step == 1:
            first_step_at = time.perf_counter() - loop_start
        train_metrics = finalize(sums, "train/")
        grad_norm = engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else 0.0
        stop = stopper.after_step(train_metrics["train/loss"], grad_norm)
        metrics: dict[str, float] = {}
        if step % cfg.train.logging_steps == 0 or step == steps or stop:
            metrics.update(train_metrics)
            metrics["train/grad_norm"] = grad_norm
            metrics["train/skipped_steps"] = float(stopper.skipped_steps)
            metrics["train/learning_rate"] = float(scheduler.get_last_lr()[0])
            if rank == 0:
                _print_progress(step, steps, metrics, pairs_done / train_seconds, train_seconds)
        if stop == "non_finite":
            log(metrics, step)
            _report_failure(rank, history, step)  # the weights may hold NaN now: export nothing
            return
        if step % cfg.train.eval_every == 0 or step == steps or stop:
            metrics.update(_evaluate(engine, eval_shard, cfg, tokenizer.pad_token_id, device))
            stop = stop or stopper.after_eval(metrics)
        if metrics:
            log(metrics, step)
        if stop:
            stop_reason = stop
            break

    perf = {
        "perf/pairs_per_second": pairs_done / train_seconds,
        "perf/tokens_per_second": tokens_done / train_seconds,
        "perf/train_seconds": train_seconds,
        "perf/seconds_to_first_step": first_step_at,
        "perf/num_workers": float(world),
        "train/steps": float(step),
    }
    _export(engine, tokenizer, cfg, rank, history, {**perf, "stop_reason": stop_reason})


def _import_deepspeed(use_gpu: bool) -> Any:
    """Import DeepSpeed for this worker's accelerator; on CPU skip the JIT shm-comm build."""
    if not use_gpu:
        os.environ["DS_ACCELERATOR"] = "cpu"  # before DeepSpeed's first get_accelerator()
    import deepspeed
    import deepspeed.ops

    if not use_gpu:
        # The shared-memory all-reduce op is JIT-compiled on first use (~34 s on 2 cores);
        # gloo does the reductions without it. DeepSpeed keeps this dict for such edits.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return deepspeed


def _micro_batches(shard: Any, cfg: Config, rank: int) -> Iterator[dict[str, np.ndarray]]:
    """Endless micro-batches over epochs of this worker's shard (equal-sized shards, drop_last)."""
    epoch = 0
    while True:
        yield from shard.iter_batches(
            batch_size=cfg.train.micro_batch_size, batch_format="numpy", drop_last=True,
            local_shuffle_buffer_size=cfg.train.micro_batch_size * 16,
            local_shuffle_seed=cfg.train.seed + 1000 * epoch + rank,
        )
        epoch += 1


def _train_step(engine: Any, batches: Iterator[dict[str, np.ndarray]], cfg: Config, pad_id: int, device: torch.device):
    """One optimizer step = gradient_accumulation_steps micro-batches; returns local metric sums."""
    sums = torch.zeros(len(SUM_FIELDS), dtype=torch.float64, device=device)
    tokens = torch.zeros(1, dtype=torch.int64, device=device)
    for _ in range(cfg.train.gradient_accumulation_steps()):
        out = batch_objective(engine, next(batches), cfg.loss, pad_id=pad_id, device=device,
                              chunk_size=cfg.train.logps_chunk_size)
        engine.backward(out.result.losses.mean())  # DeepSpeed divides by the accumulation steps
        engine.step()  # steps the optimizer and scheduler only at the accumulation boundary
        sums += metric_sums(out.result, out.stats)
        tokens += out.num_tokens
    return sums, tokens


@torch.no_grad()
def _evaluate(engine: Any, shard: Any, cfg: Config, pad_id: int, device: torch.device) -> dict[str, float]:
    engine.eval()
    sums = torch.zeros(len(SUM_FIELDS), dtype=torch.float64, device=device)
    for batch in shard.iter_batches(batch_size=cfg.train.micro_batch_size, batch_format="numpy"):
        out = batch_objective(engine, batch, cfg.loss, pad_id=pad_id, device=device, chunk_size=cfg.train.logps_chunk_size)
        sums += metric_sums(out.result, out.stats)
    dist.all_reduce(sums)
    engine.train()
    metrics = finalize(sums, "eval/")
    metrics["eval/num_pairs"] = float(sums[0].item())
    return metrics


def _export(engine: Any, tokenizer: Any, cfg: Config, rank: int, history: list[dict[str, float]], perf: dict[str, Any]) -> None:
    """Gather the weights (all ZeRO stages), save an HF model on rank 0, report it as the final checkpoint."""
    if cfg.train.zero_stage == 3:
        state_dict = engine._zero3_consolidated_16bit_state_dict()  # collective: every rank calls it
    else:
        state_dict = engine.module.state_dict()
    final = {**{k: v for row in history for k, v in row.items() if k != "step"}, **perf}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            model_dir = os.path.join(tmp, "model")
            engine.module.save_pretrained(model_dir, state_dict=state_dict)
            tokenizer.save_pretrained(model_dir)
            with open(os.path.join(tmp, "history.json"), "w") as f:
                json.dump(history, f)
            with open(os.path.join(tmp, "config.yaml"), "w") as f:
                f.write(cfg.to_yaml())
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(final, checkpoint=checkpoint)


def _report_failure(rank: int, history: list[dict[str, float]], step: int) -> None:
    """The final report of a run stopped by a non-finite loss: history only, no model."""
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            with open(os.path.join(tmp, "history.json"), "w") as f:
                json.dump(history, f)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report({"stop_reason": "non_finite", "train/steps": float(step)}, checkpoint=checkpoint)


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # time the GPU work, not its launch
    return time.perf_counter()


def _print_progress(step: int, total: int, m: dict[str, float], pairs_per_s: float, elapsed: float) -> None:
    eta = elapsed / step * (total - step)
    print(
        f"[dpo_ray] step {step}/{total} loss {m['train/loss']:.4f} "
        f"acc {m['train/rewards/accuracies']:.3f} margin {m['train/rewards/margins']:.4f} "
        f"{pairs_per_s:.1f} pairs/s ETA {eta:.0f}s",
        flush=True,
    )
