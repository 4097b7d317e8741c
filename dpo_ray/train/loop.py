"""train_loop_per_worker: one DeepSpeed rank of the DPO trainer.

Worker ring: with train/checkpoint.py (save, restore), the only module that touches
ray.train.get_dataset_shard, report and the context. Everything arrives through
``train_loop_config``; the typed config is rebuilt on the first line. Which pairs a rank sees at
each step is dpo_ray.train.order's (micro_batches, EvalShard).
"""

from __future__ import annotations

import gc
import json
import os
import tempfile
import time
from functools import partial
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from dpo_ray.config import Config
from dpo_ray.config_load import from_dict
from dpo_ray.faults import fires_once
from dpo_ray.modeling import (add_lora, check_packed_attention, load_model, load_model_partitioned, load_tokenizer,
                              model_hidden_size, resolve_dtype)
from dpo_ray.stats import process_start_time
from dpo_ray.train.checkpoint import RunState, restore, save_checkpoint
from dpo_ray.train.ds_config import build_ds_config
from dpo_ray.train.metrics import SUM_FIELDS, finalize, metric_sums
from dpo_ray.train.objective import batch_objective
from dpo_ray.train.order import EvalShard, ReadCounter, micro_batches, rank_lanes
from dpo_ray.train.schedule import lr_schedule
from dpo_ray.train.step import PeakMemory, batching, train_step
from dpo_ray.train.stopping import Stopper

WARMUP_STEPS = 2  # steps left out of perf/steady_*: allocator and DeepSpeed warm-up, first buckets


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Join the worker group, build the engine, restore a checkpoint, evaluate at step 0, then per
    step: train, count, log, evaluate, checkpoint, stop; finally export the model and figures."""
    marks = {"startup/worker_process_start": process_start_time(), "startup/worker_loop_entered": time.time()}
    cfg = from_dict(loop_config["config"])
    steps, steps_per_epoch = int(loop_config["total_steps"]), int(loop_config["steps_per_epoch"])
    deepspeed = _import_deepspeed(cfg.train.use_gpu)
    marks["startup/worker_deepspeed_imported"] = time.time()
    rank, world, device = _join_worker_group(cfg)
    loop_start = time.perf_counter()
    worker_nodes: list[Any] = [None] * world  # Ray node id of each rank, in rank order: placement shows in metrics.json
    dist.all_gather_object(worker_nodes, ray.get_runtime_context().get_node_id())
    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.revision, cfg.model.trust_remote_code)
    pad_id = tokenizer.pad_token_id
    engine, scheduler = _build_engine(deepspeed, cfg, steps, marks)

    state = restore(engine, rank, loop_config.get("resume_path"))
    marks["startup/worker_engine_ready"] = time.time()  # restored too
    stopper = Stopper(cfg.train, **state.stopper)
    lanes = rank_lanes(cfg, rank, world)  # this rank's own datasets only: 1/W of the pairs (train/order.py)
    reads = [ReadCounter(ray.train.get_dataset_shard(f"lane_{c}")) for c in lanes]
    train_batches = micro_batches(reads, lanes, cfg, steps_per_epoch, state.step)
    eval_shard = EvalShard(ray.train.get_dataset_shard(f"eval_{rank}"), ray.train.get_dataset_shard("eval_0"),
                           cfg.train.micro_batch_size, int(loop_config["eval_rounds"]))

    if state.step == 0:
        _log(engine, state, stopper, rank, _evaluate(engine, eval_shard, cfg, pad_id, device), step=0)
    marks["startup/worker_step0_eval_done"] = time.time()
    engine.train()  # from_pretrained returns eval mode; a resumed run has no step-0 eval to switch it (dropout, checkpointing)
    stop_reason = "epochs" if cfg.train.epochs is not None else "max_steps"
    peak = PeakMemory(device)
    peak.interval()  # start-up's peak counts in perf/peak_memory_mib; train/peak_memory_mib is per report from here
    faults = loop_config.get("faults", {})
    for step in range(state.step + 1, steps + 1):
        t0 = _now(device)
        sums, tokens, largest = train_step(engine, train_batches, cfg, pad_id, device)
        real_tokens = _count_step(state, step, cfg.train.batch_size, tokens, largest, t0, loop_start, device)
        train_metrics = finalize(sums, "train/")
        grad_norm = engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else 0.0
        stop = stopper.after_step(train_metrics["train/loss"], grad_norm)
        metrics: dict[str, Any] = {}
        if step % cfg.train.logging_steps == 0 or step == steps or stop:
            metrics = _logged_train_metrics(train_metrics, grad_norm, stopper, scheduler, epoch=step / steps_per_epoch)
            metrics["train/peak_memory_mib"] = _largest_rank(peak.interval(), device)  # since the last report
        if stop == "non_finite":
            state.history.append({"step": float(step), **metrics})
            _report_failure(rank, state.history, step)  # the weights may hold NaN now: export nothing
            return
        not_training = 0.0  # eval and checkpoint seconds, left out of the step's wall time
        if step % cfg.train.eval_every == 0 or step == steps or stop:
            t_eval = _now(device)
            metrics.update(_evaluate(engine, eval_shard, cfg, pad_id, device))
            stop = stop or stopper.after_eval(metrics)
            not_training += _now(device) - t_eval
        checkpoint = cfg.train.checkpoint_every is not None and step % cfg.train.checkpoint_every == 0 and step < steps
        if metrics or checkpoint:
            t_log = _now(device)
            _log(engine, state, stopper, rank, metrics, step, checkpoint=checkpoint)
            not_training += (_now(device) - t_log) if checkpoint else 0.0
        if step > WARMUP_STEPS:  # steady state: the step's whole wall time (metrics, logging barrier included)
            state.steady_seconds += _now(device) - t0 - not_training
            state.steady_pairs += cfg.train.batch_size
            state.steady_tokens += real_tokens
        if rank == world - 1 and fires_once(faults, "train", step):  # the test switch (dpo_ray.faults)
            os._exit(1)
        if stop:
            stop_reason = stop
            break

    perf = {**_perf_figures(state, device, world, worker_nodes, peak), **_read_figures(reads, world), **marks}
    _export(engine, tokenizer, cfg, rank, state.history, {**perf, "stop_reason": stop_reason, "perf/batching": batching(cfg.train, engine.module.config._attn_implementation)})


def _join_worker_group(cfg: Config) -> tuple[int, int, torch.device]:
    """This worker's rank, the world size and its device; torch threads and seed from the config."""
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.train.cpus_per_worker)
    torch.manual_seed(cfg.train.seed)
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return rank, world, device


def _build_engine(deepspeed: Any, cfg: Config, steps: int, marks: dict[str, float]) -> tuple[Any, Any]:
    """The policy (with LoRA when model.lora.r > 0), AdamW and the LR schedule inside a DeepSpeed
    engine; returns the engine and the scheduler. With ZeRO-3 the model is built partitioned (no rank
    ever holds all its weights; gathered only at export). Adds startup/worker_model_loaded to ``marks``."""
    dtype = resolve_dtype(cfg.model.dtype, on_gpu=cfg.train.use_gpu, bf16=cfg.train.bf16)
    m = cfg.model
    ds_config = build_ds_config(cfg.train, model_hidden_size(m.name_or_path, m.revision, m.trust_remote_code))
    load = partial(load_model_partitioned, ds_config=ds_config) if cfg.train.resolved_zero_stage() == 3 else load_model
    model = load(m.name_or_path, revision=m.revision, dtype=dtype, disable_dropout=m.disable_dropout,
                 trust_remote_code=m.trust_remote_code, attn_implementation=m.attn_implementation)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    lora = cfg.model.lora
    if lora.r > 0:
        model = add_lora(model, r=lora.r, alpha=lora.alpha, dropout=lora.dropout, target_modules=lora.target_modules)
    marks["startup/worker_model_loaded"] = time.time()
    # A torch optimizer: DeepSpeed then JIT-builds no FusedAdam extension. torch's fused AdamW (CPU and
    # CUDA) is the HF Trainer's default (optim=adamw_torch_fused, so TRL's) and steps without the
    # foreach path's temporaries of the whole partition.
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay, fused=True)
    scheduler = lr_schedule(cfg.train.lr_scheduler, optimizer, num_warmup_steps=cfg.train.warmup_steps(steps),
                            num_training_steps=steps)
    engine, _, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                   config=ds_config)
    if cfg.train.padding_free:  # after initialize: ZeRO-3's hooks gather the partitioned weights for it
        check_packed_attention(engine.module, m.name_or_path, "train.padding_free")
    return engine, scheduler


def _log(engine: Any, state: RunState, stopper: Stopper, rank: int, metrics: dict[str, Any], step: int,
         checkpoint: bool = False) -> None:
    """Add the step's metrics to the history and report them, with a checkpoint when asked."""
    state.history.append({"step": float(step), **metrics})
    if checkpoint:
        state.stopper = {"best": stopper.best, "evals_without_improvement": stopper.evals_without_improvement,
                         "skipped_steps": stopper.skipped_steps}
        save_checkpoint(engine, state, rank, state.history[-1])
    else:
        ray.train.report(state.history[-1])  # a barrier: every rank reports on the same steps


def _count_step(state: RunState, step: int, batch_size: int, tokens: torch.Tensor, largest: int, t0: float,
                loop_start: float, device: torch.device) -> int:
    """Add the finished step to the run's counters (train_step's ``tokens`` and this rank's largest
    micro-batch); returns its real (non-pad) tokens."""
    state.step = step
    real_tokens = int(tokens[0].item())
    state.train_seconds += _now(device) - t0
    state.pairs_done += batch_size
    state.tokens_done += real_tokens
    state.token_slots_done += int(tokens[1].item())
    state.micro_batches_done += int(tokens[2].item())
    state.micro_batch_slots_max = max(state.micro_batch_slots_max, largest)
    if step == 1:
        state.first_step_at = time.perf_counter() - loop_start
        state.first_step_time = time.time()
    return real_tokens


def _logged_train_metrics(train_metrics: dict[str, float], grad_norm: float, stopper: Stopper, scheduler: Any,
                          epoch: float) -> dict[str, Any]:
    """A logging step's train/ metrics (the driver prints the progress line, dpo_ray/screen.py)."""
    return {**train_metrics, "train/grad_norm": grad_norm, "train/skipped_steps": float(stopper.skipped_steps),
            "train/learning_rate": float(scheduler.get_last_lr()[0]), "train/epoch": epoch}


def _perf_figures(state: RunState, device: torch.device, world: int, worker_nodes: list[Any],
                  peak: PeakMemory) -> dict[str, Any]:
    """The run's perf/ and placement/ figures for metrics.json (memory, the largest micro-batch: collectives)."""
    return {
        **_memory_figures(device, peak),
        "perf/micro_batch_tokens_mean": state.token_slots_done / max(state.micro_batches_done, 1),
        "perf/micro_batch_tokens_max": _largest_rank(float(state.micro_batch_slots_max), device),
        "perf/micro_batches_per_step": state.micro_batches_done / max(state.step, 1) / world,
        "perf/pairs_per_second": state.pairs_done / state.train_seconds,
        "perf/tokens_per_second": state.tokens_done / state.train_seconds,
        "perf/pad_fraction": 1.0 - state.tokens_done / max(state.token_slots_done, 1),
        "perf/train_seconds": state.train_seconds,
        "perf/seconds_to_first_step": state.first_step_at,
        **({"perf/first_step_time": state.first_step_time} if state.first_step_time else {}),
        **({"perf/steady_pairs_per_second": state.steady_pairs / state.steady_seconds,
            "perf/steady_tokens_per_second": state.steady_tokens / state.steady_seconds} if state.steady_seconds else {}),
        "perf/num_workers": float(world),
        "placement/worker_nodes": worker_nodes,
        "train/steps": float(state.step),
        "train/pairs_seen": float(state.pairs_done),
    }


def _read_figures(reads: list[ReadCounter], world: int) -> dict[str, Any]:
    """Train rows, token ids and bytes each rank read from Ray Data in this (re)start, in rank order (a collective)."""
    mine = {"rows": float(sum(r.rows for r in reads)), "tokens": float(sum(r.tokens for r in reads)),
            "bytes": float(sum(r.bytes for r in reads))}
    every: list[Any] = [None] * world
    dist.all_gather_object(every, mine)
    return {f"data/{name}_read_per_worker": [counts[name] for counts in every] for name in mine}


def _import_deepspeed(use_gpu: bool) -> Any:
    """Import DeepSpeed for this worker's accelerator; on CPU skip the JIT shm-comm build."""
    if not use_gpu:
        os.environ["DS_ACCELERATOR"] = "cpu"  # before DeepSpeed's first get_accelerator()
    import deepspeed
    import deepspeed.ops

    if not use_gpu:
        # The shared-memory all-reduce op is JIT-compiled on first use (tens of seconds on a small CPU);
        # gloo does the reductions without it. DeepSpeed keeps this dict for such edits.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return deepspeed


@torch.no_grad()
def _evaluate(engine: Any, shard: EvalShard, cfg: Config, pad_id: int, device: torch.device) -> dict[str, float]:
    """Every eval pair exactly once: each rank its own share (train/order.py EvalShard); ranks with
    fewer batches run forwards they do not count, so every rank runs as many (ZeRO-3 gathers)."""
    engine.eval()
    names = [s.name for s in cfg.data.sources]
    sums = torch.zeros(1 + len(names), len(SUM_FIELDS), dtype=torch.float64, device=device)  # all, then per source
    mine, filler = shard.batches()
    for i in range(shard.rounds()):
        counted = i < len(mine)
        out = batch_objective(engine, mine[i] if counted else filler, cfg.loss, pad_id=pad_id, device=device,
                              chunk_size=cfg.train.logps_chunk_size, padding_free=cfg.train.padding_free)
        if counted:
            sums[0] += metric_sums(out.result, out.stats, beta=cfg.loss.beta)
            # torch.tensor copies: Ray Data's numpy batches are read-only (torch.as_tensor warns on them)
            mixture = torch.tensor(np.asarray(mine[i]["mixture"], dtype=np.int64), device=device)
            for s in range(len(names)):
                sums[1 + s] += metric_sums(out.result, out.stats, mask=mixture == s, beta=cfg.loss.beta)
    dist.all_reduce(sums)
    engine.train()
    metrics = finalize(sums[0], "eval/")
    metrics["eval/num_pairs"] = float(sums[0, 0].item())
    for s, name in enumerate(names):
        if sums[1 + s, 0] > 0:  # a source with eval pairs
            metrics.update(finalize(sums[1 + s], f"eval/{name}/"))
            metrics[f"eval/{name}/num_pairs"] = float(sums[1 + s, 0].item())
    return metrics


def _export(engine: Any, tokenizer: Any, cfg: Config, rank: int, history: list[dict[str, float]], perf: dict[str, Any]) -> None:
    """Gather the weights (all ZeRO stages), save an HF model on rank 0, report it as the final checkpoint."""
    lora = cfg.model.lora
    state_dict = None
    if cfg.train.resolved_zero_stage() == 3:
        state_dict = engine._zero3_consolidated_16bit_state_dict()  # collective: every rank calls it

    def write(tmp: str) -> None:
        model_dir = os.path.join(tmp, "model")
        module = engine.module
        if lora.r > 0 and state_dict is not None:  # ZeRO-3 partitioned the PEFT model: rebuild it whole here
            module = _whole_lora_model(cfg, state_dict)
        if lora.r > 0 and lora.export == "adapter":
            module.save_pretrained(model_dir)  # adapter_config.json + adapter weights
        elif lora.r > 0:
            module.merge_and_unload().save_pretrained(model_dir)  # end of training: merge in place
        else:
            engine.module.save_pretrained(model_dir, state_dict=state_dict)  # None: the module's own weights
        tokenizer.save_pretrained(model_dir)
        with open(os.path.join(tmp, "config.yaml"), "w") as f:
            f.write(cfg.to_yaml())

    final = {**{k: v for row in history for k, v in row.items() if k != "step"}, **perf}
    _final_report(rank, history, final, write)


def _whole_lora_model(cfg: Config, state_dict: dict[str, torch.Tensor]) -> Any:
    """The PEFT model built afresh on this rank (CPU) and given ZeRO-3's gathered weights."""
    lora = cfg.model.lora
    base = load_model(cfg.model.name_or_path, revision=cfg.model.revision, dtype=next(iter(state_dict.values())).dtype,
                      trust_remote_code=cfg.model.trust_remote_code)
    model = add_lora(base, r=lora.r, alpha=lora.alpha, dropout=lora.dropout, target_modules=lora.target_modules)
    model.load_state_dict(state_dict, strict=True)
    return model


def _report_failure(rank: int, history: list[dict[str, float]], step: int) -> None:
    """The final report of a run stopped by a non-finite loss: history only, no model."""
    _final_report(rank, history, {"stop_reason": "non_finite", "train/steps": float(step)}, lambda tmp: None)


def _final_report(rank: int, history: list[dict[str, float]], metrics: dict[str, Any], write: Any) -> None:
    """Last ray.train.report of the run: rank 0's checkpoint holds history.json and what ``write`` adds."""
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            write(tmp)
            with open(os.path.join(tmp, "history.json"), "w") as f:
                json.dump(history, f)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)


def _largest_rank(value: float, device: torch.device) -> float:
    """The largest of the ranks' ``value`` (a collective)."""
    figure = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(figure, op=dist.ReduceOp.MAX)
    return float(figure[0])


def _memory_figures(device: torch.device, peak: PeakMemory) -> dict[str, float]:
    """The largest rank's model-state memory after training (bytes of every live tensor on the
    device, each storage once: weights, gradients, optimizer states, DeepSpeed's partitions and
    buffers) and peak memory (RSS on CPU, allocated memory on GPU), in MiB. A collective."""
    gc.collect()
    storages: dict[int, int] = {}
    for obj in gc.get_objects():
        try:
            # type(), not isinstance: isinstance reads obj.__class__, and on torch.distributed.reduce_op
            # (among gc's objects) that raises torch's deprecation warning
            if issubclass(type(obj), torch.Tensor) and obj.device.type == device.type:
                storage = obj.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
        except (RuntimeError, NotImplementedError):  # tensors without storage (meta, some wrappers)
            continue
    peak.interval()  # the last interval: peak.overall is the run's peak (RSS on CPU, allocated memory on GPU)
    figures = torch.tensor([sum(storages.values()), peak.overall * 2**20], dtype=torch.float64, device=device)
    dist.all_reduce(figures, op=dist.ReduceOp.MAX)
    return {"perf/model_state_mib": float(figures[0]) / 2**20, "perf/peak_memory_mib": float(figures[1]) / 2**20}


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # time the GPU work, not its launch
    return time.perf_counter()

