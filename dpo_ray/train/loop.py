"""train_loop_per_worker: one DeepSpeed rank of the DPO trainer.

Worker ring: the only module that touches ray.train.get_dataset_shard, report and the context.
Everything arrives through ``train_loop_config``; the typed config is rebuilt on the first line.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from transformers import get_scheduler

from dpo_ray.config import Config, from_dict
from dpo_ray.faults import fires_once
from dpo_ray.train.ds_config import build_ds_config
from dpo_ray.train.metrics import SUM_FIELDS, finalize, metric_sums
from dpo_ray.modeling import add_lora, load_model, load_tokenizer, resolve_dtype
from dpo_ray.train.objective import batch_objective
from dpo_ray.train.stopping import Stopper

WARMUP_STEPS = 2  # steps left out of perf/steady_*: allocator and DeepSpeed warm-up, first buckets
SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


@dataclass
class RunState:
    """What a checkpoint carries besides DeepSpeed's model, optimizer and scheduler state."""

    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    pairs_done: int = 0
    tokens_done: int = 0
    token_slots_done: int = 0
    """Tokens computed including padding (perf/pad_fraction = 1 - tokens_done / token_slots_done)."""
    first_step_at: float = 0.0
    first_step_time: float = 0.0
    """Wall-clock (Unix) time at which step 1 ended: a bench measures time to first step from its launch."""
    steady_seconds: float = 0.0
    steady_pairs: int = 0
    steady_tokens: int = 0
    """Over the steps after the first WARMUP_STEPS: each step's whole wall time (forward, backward,
    optimizer, all-reduces, metrics and the report barrier; not eval or checkpoints), its pairs and
    real tokens. train_seconds times the step's compute and all-reduces only."""
    stopper: dict[str, Any] = field(default_factory=dict)
    """Early-stopping and skip counters (Stopper's fields other than the config), filled at save time."""


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    cfg = from_dict(loop_config["config"])
    steps, steps_per_epoch = int(loop_config["total_steps"]), int(loop_config["steps_per_epoch"])
    deepspeed = _import_deepspeed(cfg.train.use_gpu)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.train.cpus_per_worker)
    torch.manual_seed(cfg.train.seed)
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    loop_start = time.perf_counter()
    worker_nodes: list[Any] = [None] * world  # Ray node id of each rank, in rank order: placement shows in metrics.json
    dist.all_gather_object(worker_nodes, ray.get_runtime_context().get_node_id())

    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.revision, cfg.model.trust_remote_code)
    pad_id = tokenizer.pad_token_id
    dtype = resolve_dtype(cfg.model.dtype, on_gpu=cfg.train.use_gpu, bf16=cfg.train.bf16)
    model = load_model(cfg.model.name_or_path, revision=cfg.model.revision, dtype=dtype,
                       disable_dropout=cfg.model.disable_dropout, trust_remote_code=cfg.model.trust_remote_code)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    lora = cfg.model.lora
    if lora.r > 0:
        model = add_lora(model, r=lora.r, alpha=lora.alpha, dropout=lora.dropout, target_modules=lora.target_modules)
    # A torch optimizer: DeepSpeed then JIT-builds no FusedAdam (RAY-DEEPSPEED-NOTES.md).
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay)
    scheduler = get_scheduler(SCHEDULERS[cfg.train.lr_scheduler], optimizer,
                              num_warmup_steps=cfg.train.warmup_steps(steps), num_training_steps=steps)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=build_ds_config(cfg.train, getattr(model.config, "hidden_size", None))
    )

    state = _restore(engine, rank, loop_config.get("resume_path"))
    stopper = Stopper(cfg.train, **state.stopper)
    train_batches = micro_batches(ray.train.get_dataset_shard("train"), cfg, rank, world, steps_per_epoch, state.step)
    eval_shard = EvalShard(ray.train.get_dataset_shard("eval"), cfg.train.micro_batch_size, rank, world)

    def log(metrics: dict[str, Any], step: int, checkpoint: bool = False) -> None:
        state.history.append({"step": float(step), **metrics})
        if checkpoint:
            state.stopper = {"best": stopper.best, "evals_without_improvement": stopper.evals_without_improvement,
                             "skipped_steps": stopper.skipped_steps}
            _save_checkpoint(engine, state, rank, state.history[-1])
        else:
            ray.train.report(state.history[-1])  # a barrier: every rank reports on the same steps

    if state.step == 0:
        log(_evaluate(engine, eval_shard, cfg, pad_id, device), step=0)
    stop_reason = "epochs" if cfg.train.epochs is not None else "max_steps"
    faults = loop_config.get("faults", {})
    for step in range(state.step + 1, steps + 1):
        t0 = _now(device)
        sums, tokens = _train_step(engine, train_batches, cfg, pad_id, device)
        dist.all_reduce(sums)
        dist.all_reduce(tokens)
        state.step = step
        real_tokens = int(tokens[0].item())
        state.train_seconds += _now(device) - t0
        state.pairs_done += cfg.train.batch_size
        state.tokens_done += real_tokens
        state.token_slots_done += int(tokens[1].item())
        if step == 1:
            state.first_step_at = time.perf_counter() - loop_start
            state.first_step_time = time.time()
        train_metrics = finalize(sums, "train/")
        grad_norm = engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else 0.0
        stop = stopper.after_step(train_metrics["train/loss"], grad_norm)
        metrics: dict[str, Any] = {}
        if step % cfg.train.logging_steps == 0 or step == steps or stop:
            metrics.update(train_metrics)
            metrics["train/grad_norm"] = grad_norm
            metrics["train/skipped_steps"] = float(stopper.skipped_steps)
            metrics["train/learning_rate"] = float(scheduler.get_last_lr()[0])
            metrics["train/epoch"] = step / steps_per_epoch  # the driver prints the progress line (dpo_ray/screen.py)
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
            log(metrics, step, checkpoint=checkpoint)
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

    perf = {
        **_memory_figures(device),
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
    _export(engine, tokenizer, cfg, rank, state.history, {**perf, "stop_reason": stop_reason})


def _save_checkpoint(engine: Any, state: RunState, rank: int, metrics: dict[str, Any]) -> None:
    """Every rank writes its DeepSpeed shards (model, optimizer, scheduler) and RNG; rank 0 the run
    state. Ray merges the ranks' folders into one checkpoint."""
    with tempfile.TemporaryDirectory() as tmp:
        engine.save_checkpoint(tmp, tag="deepspeed")  # collective
        torch.save(torch.get_rng_state(), os.path.join(tmp, f"rng_rank{rank}.pt"))
        if rank == 0:
            with open(os.path.join(tmp, "run_state.json"), "w") as f:
                json.dump(asdict(state), f)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _restore(engine: Any, rank: int, resume_path: str | None) -> RunState:
    """Load the latest Ray checkpoint (a restarted worker group) or ``resume_path`` (train.resume_from)."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and resume_path:
        checkpoint = ray.train.Checkpoint.from_directory(resume_path)
    if checkpoint is None:
        return RunState()
    with checkpoint.as_directory() as path:
        engine.load_checkpoint(path, tag="deepspeed")
        rng = os.path.join(path, f"rng_rank{rank}.pt")
        if os.path.exists(rng):
            torch.set_rng_state(torch.load(rng, weights_only=True))
        with open(os.path.join(path, "run_state.json")) as f:
            state = RunState(**json.load(f))
    if rank == 0:
        print(f"[dpo_ray] resumed at step {state.step}", flush=True)
    return state


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


def micro_batches(
    dataset: Any, cfg: Config, rank: int, world: int, steps_per_epoch: int, start_step: int
) -> Iterator[dict[str, np.ndarray]]:
    """Endless micro-batches for this rank, the same stream whatever the worker count.

    Every rank reads the whole (unsplit, deterministically shuffled) train set in the same order;
    from the second epoch on, micro-batches are permuted within windows by a seeded RNG, the same
    on every rank. Global step s of an epoch covers micro-batches [s * A * W, (s + 1) * A * W)
    (A accumulation steps, W workers) and rank r takes those with index = r mod W. So a global batch
    is the same pairs for 1 or 2 workers, and a resumed run starts exactly after the last completed
    step: no pair repeated or skipped.
    """
    per_step = cfg.train.gradient_accumulation_steps() * world
    step = start_step
    while True:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        first, end = in_epoch * per_step, steps_per_epoch * per_step
        if cfg.train.group_by_length:
            batches = _length_grouped(dataset, cfg.train.micro_batch_size, cfg.train.length_group_window,
                                      np.random.default_rng([cfg.train.seed, epoch]))
        else:
            batches = dataset.iter_batches(batch_size=cfg.train.micro_batch_size, batch_format="numpy", drop_last=True)
            if epoch > 0:
                batches = _window_shuffle(batches, np.random.default_rng(cfg.train.seed + epoch), window=32)
        for index, batch in enumerate(batches):
            if index >= end:
                break
            if index >= first and index % world == rank:
                yield batch
        step = (epoch + 1) * steps_per_epoch


def _length_grouped(dataset: Any, micro: int, window: int, rng: np.random.Generator) -> Iterator[dict[str, np.ndarray]]:
    """Micro-batches of similar length: each window of ``window`` micro-batches' pairs (in the
    seeded train order) is sorted by padded width and cut into micro-batches, which are then
    permuted (seeded). A partial micro-batch at the end of the epoch is dropped."""
    for block in dataset.iter_batches(batch_size=micro * window, batch_format="numpy"):
        n = len(block["row_id"]) // micro * micro
        widths = [len(p) + max(len(c), len(r)) for p, c, r in zip(block["prompt_ids"][:n], block["chosen_ids"][:n], block["rejected_ids"][:n])]
        order = np.argsort(np.asarray(widths), kind="stable")
        cuts = [order[i:i + micro] for i in range(0, n, micro)]
        for j in rng.permutation(len(cuts)):
            yield {k: v[cuts[j]] for k, v in block.items()}


def _window_shuffle(batches: Iterator[Any], rng: np.random.Generator, window: int) -> Iterator[Any]:
    """Permute consecutive windows of micro-batches (deterministic for a given rng seed)."""
    buffer: list[Any] = []
    for batch in batches:
        buffer.append(batch)
        if len(buffer) == window:
            yield from (buffer[i] for i in rng.permutation(window))
            buffer = []
    yield from (buffer[i] for i in rng.permutation(len(buffer)))


def _train_step(engine: Any, batches: Iterator[dict[str, np.ndarray]], cfg: Config, pad_id: int, device: torch.device):
    """One optimizer step = gradient_accumulation_steps micro-batches; returns local metric sums."""
    sums = torch.zeros(len(SUM_FIELDS), dtype=torch.float64, device=device)
    tokens = torch.zeros(2, dtype=torch.int64, device=device)  # real tokens, token slots (pads included)
    for _ in range(cfg.train.gradient_accumulation_steps()):
        out = batch_objective(engine, next(batches), cfg.loss, pad_id=pad_id, device=device,
                              chunk_size=cfg.train.logps_chunk_size)
        engine.backward(out.result.losses.mean())  # DeepSpeed divides by the accumulation steps
        engine.step()  # steps the optimizer and scheduler only at the accumulation boundary
        sums += metric_sums(out.result, out.stats, beta=cfg.loss.beta)
        tokens[0] += out.num_tokens
        tokens[1] += out.padded_tokens
    return sums, tokens


class EvalShard:
    """This rank's eval micro-batches (r, r + W, ...), the first micro-batch and their count, read
    from the eval dataset at the first eval and kept for the later ones: each read re-ran the Ray
    Data pipeline, about 1 s an eval on the 2-core machine. Holds 1/W of the eval set's token ids."""

    def __init__(self, dataset: Any, micro_batch_size: int, rank: int, world: int) -> None:
        self._dataset, self._micro, self._rank, self._world = dataset, micro_batch_size, rank, world
        self._read: tuple[list[dict[str, np.ndarray]], dict[str, np.ndarray] | None, int] | None = None

    def batches(self) -> tuple[list[dict[str, np.ndarray]], dict[str, np.ndarray] | None, int]:
        if self._read is None:
            mine, first, total = [], None, 0
            for index, batch in enumerate(self._dataset.iter_batches(batch_size=self._micro, batch_format="numpy")):
                first = batch if first is None else first
                total = index + 1
                if index % self._world == self._rank:
                    mine.append(batch)
            self._read = (mine, first, total)
        return self._read


@torch.no_grad()
def _evaluate(engine: Any, shard: EvalShard, cfg: Config, pad_id: int, device: torch.device) -> dict[str, float]:
    """Every eval pair exactly once: rank r takes micro-batches r, r + W, ...; ranks with one batch
    fewer run a forward they do not count, so every rank runs as many forwards (ZeRO-3 gathers)."""
    world = dist.get_world_size()
    engine.eval()
    names = [s.name for s in cfg.data.sources]
    sums = torch.zeros(1 + len(names), len(SUM_FIELDS), dtype=torch.float64, device=device)  # all, then per source
    mine, first, total = shard.batches()
    rounds = -(-total // world)  # ceil
    for i in range(rounds):
        counted = i < len(mine)
        out = batch_objective(engine, mine[i] if counted else first, cfg.loss, pad_id=pad_id, device=device,
                              chunk_size=cfg.train.logps_chunk_size)
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


def _memory_figures(device: torch.device) -> dict[str, float]:
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
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # Linux: KiB
    figures = torch.tensor([sum(storages.values()), peak], dtype=torch.float64, device=device)
    dist.all_reduce(figures, op=dist.ReduceOp.MAX)
    return {"perf/model_state_mib": float(figures[0]) / 2**20, "perf/peak_memory_mib": float(figures[1]) / 2**20}


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # time the GPU work, not its launch
    return time.perf_counter()

