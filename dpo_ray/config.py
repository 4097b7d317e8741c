"""The run configuration's schema: typed frozen groups, a docstring per field, validation in __post_init__.
Imports only its own parts (config_check.py, config_loss.py: loss.*) from dpo_ray; YAML and dotted overrides are read into it by config_load.py."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from dpo_ray.config_check import ATTENTION_KERNELS, ConfigError as ConfigError, dtype_name, needs_gpu, require as require
from dpo_ray.config_online import OnlineConfig
from dpo_ray.config_loss import (BATCH_WIDE_LOSSES as BATCH_WIDE_LOSSES, F_DIVERGENCE_LOSSES as F_DIVERGENCE_LOSSES,
                                 LABEL_SMOOTHING_LOSSES as LABEL_SMOOTHING_LOSSES, LOSS_TYPES as LOSS_TYPES,
                                 NO_WPO_LOSSES as NO_WPO_LOSSES, REFERENCE_FREE as REFERENCE_FREE,
                                 LossConfig as LossConfig, LossName as LossName)


@dataclass(frozen=True)
class LoraConfig:
    r: int = 0
    """LoRA rank; 0 trains all weights."""
    alpha: int = 16
    """LoRA scaling numerator (lora_alpha)."""
    dropout: float = 0.0
    """Dropout on the LoRA branch."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Module names that get adapters (PEFT's target_modules)."""
    export: Literal["merged", "adapter"] = "merged"
    """model/ holds the merged full model, or only the adapter (load it over the base with PEFT)."""

    def __post_init__(self) -> None:
        if self.r < 0 or self.alpha < 1 or not 0.0 <= self.dropout < 1.0 or not self.target_modules:
            raise ConfigError("model.lora: need r >= 0, alpha >= 1, dropout in [0, 1) and at least one target module")


@dataclass(frozen=True)
class ModelConfig:
    name_or_path: str = "pipelines/assets/tiny-llama"
    """Hub id (e.g. Qwen/Qwen2.5-0.5B-Instruct) or a local directory saved with save_pretrained."""
    revision: str | None = None
    """Hub revision (branch, tag or commit); ignored for local directories."""
    trust_remote_code: bool = False
    """Run modelling/tokenizer code shipped with a hub repo (it executes on every worker): off unless set."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype for training: auto is bfloat16 on GPU (with train.bf16) and float32 on CPU."""
    disable_dropout: bool = True
    """Zero every dropout probability, as TRL's DPOTrainer does by default."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    attn_implementation: str | None = None
    """Attention kernel of the policy and reference models, passed to from_pretrained as TRL's
    model_init_kwargs pass it: null keeps transformers' default (sdpa); eager, sdpa, flash_attention_2,
    flash_attention_3 or flex_attention. Flash-attention needs train.use_gpu, 16-bit weights and the
    flash_attn package on the workers; with train.padding_free it runs each packed row as separate
    sequences (no pads and no block mask; README: Long, uneven sequences). A reference scored on CPU
    (reference.num_gpus_per_actor=0) keeps transformers' default instead of a flash kernel."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA through PEFT (model.lora.r > 0); the frozen base is the reference model."""

    def __post_init__(self) -> None:
        require((self.attn_implementation in (None, *ATTENTION_KERNELS),
                 f"model.attn_implementation={self.attn_implementation!r}: choose one of {', '.join(ATTENTION_KERNELS)} "
                 "or null (transformers' default, sdpa)"))


@dataclass(frozen=True)
class ColumnsConfig:
    prompt: str = "prompt"
    """Column holding the prompt (ignored by the implicit_prompt / ultrafeedback formats)."""
    chosen: str = "chosen"
    """Column holding the preferred completion."""
    rejected: str = "rejected"
    """Column holding the dispreferred completion."""


@dataclass(frozen=True)
class SourceConfig:
    name: str
    """Short name ([A-Za-z0-9_.-]); eval metrics per source are eval/<name>/..."""
    path: str
    """As data.path: files, a glob, a saved dataset directory, s3:// or gs://, or a hub id."""
    weight: float = 1.0
    """Share of the train stream: source s fills weight_s / sum(weights) of every epoch."""
    split: str = "train"
    """As data.split: the split of a hub dataset or a saved DatasetDict."""
    subset: str | None = None
    """As data.subset: the hub dataset configuration name."""
    revision: str | None = None
    """As data.revision: the hub dataset revision."""
    eval: bool = False
    """Held out whole for evaluation (then no source is split by prompt hash)."""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ConfigError(f"data.sources name {self.name!r}: use letters, digits, _ . - (it names eval/<name>/ metrics)")
        if not self.weight > 0:
            raise ConfigError(f"data.sources {self.name}: weight={self.weight} must be > 0")


@dataclass(frozen=True)
class DataConfig:
    path: str = "pipelines/assets/quickstart_pairs.jsonl"
    """JSONL/JSON/Parquet/CSV file, directory or glob; s3:// or gs:// URI; a save_to_disk folder; a hub id."""
    split: str = "train"
    """Split of a hub dataset or a saved DatasetDict."""
    subset: str | None = None
    """Hub dataset configuration name."""
    revision: str | None = None
    """Hub dataset revision."""
    format: Literal["auto", "standard", "conversational", "implicit_prompt", "ultrafeedback", "sharegpt"] = "auto"
    """Record layout; auto detects it per row (README: Data formats)."""
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    """Map other column names onto prompt/chosen/rejected."""
    max_length: int = 128
    """Most tokens in prompt + completion; completions are cut at the end to fit."""
    max_prompt_length: int | None = None
    """Most prompt tokens; longer prompts are cut per truncation_mode."""
    truncation_mode: Literal["keep_end", "keep_start"] = "keep_end"
    """Which end of a prompt longer than max_prompt_length to keep (TRL 1.16 has no prompt limit)."""
    tokenize_jointly: bool = False
    """Tokenize prompt + completion together and cut at the common token prefix, as TRL 1.16 does
    (reproduces a TRL run token for token); off: the prompt keeps its own ids, as at inference."""
    eval_fraction: float = 0.1
    """Share of distinct prompts held out for evaluation (chosen by a hash of the prompt)."""
    max_drop_fraction: float = 0.05
    """Stop before training when more than this share of rows is dropped (see data_report.json)."""
    dedup: bool = True
    """Drop exact duplicate pairs (same prompt, chosen and rejected), keeping the first."""
    sources: list[SourceConfig] = field(default_factory=list)
    """A mixture: several sources ({name, path, weight, split, subset, revision, eval}) in place of
    data.path. An epoch has as many train pairs as all sources together, source s fills weight_s /
    sum(weights) of it (repeated or subsampled by seeded hash: train/order.py); eval is per source too."""
    tokenize_actors: int = 1
    """Ray Data actors that tokenize in parallel (each holds one tokenizer)."""
    tokenize_batch_size: int = 256
    """Rows per tokenization batch."""
    cache_dir: str | None = "~/.cache/dpo_ray/tokenized"
    """Tokenized rows kept as Parquet by content key (inputs, tokenizer, format, lengths; local, s3://,
    gs://; null: off); a rerun with the same key skips tokenization. A hub dataset needs data.revision pinned."""

    def __post_init__(self) -> None:
        names = [s.name for s in self.sources]
        require(
            (self.max_length >= 4, f"data.max_length={self.max_length}: must be at least 4 tokens"),
            (self.max_prompt_length is None or 1 <= self.max_prompt_length < self.max_length,
             f"data.max_prompt_length={self.max_prompt_length}: must be in [1, data.max_length)"),
            (0.0 < self.eval_fraction < 1.0, f"data.eval_fraction={self.eval_fraction}: must be in (0, 1)"),
            (0.0 <= self.max_drop_fraction <= 1.0, f"data.max_drop_fraction={self.max_drop_fraction}: must be in [0, 1]"),
            (self.tokenize_actors >= 1 and self.tokenize_batch_size >= 1, "data.tokenize_actors and data.tokenize_batch_size must be >= 1"),
            (len(set(names)) == len(names), f"data.sources: names must be unique, got {names}"),
            (not self.sources or not all(s.eval for s in self.sources),
             "data.sources: every source is eval: true; mark at least one as a train source"),
        )

    def column_map(self) -> dict[str, str]:
        return dataclasses.asdict(self.columns)


@dataclass(frozen=True)
class ReferenceConfig:
    name_or_path: str | None = None
    """The reference model when it is not the policy's starting point (iterative DPO's initial model):
    a local dir or hub id with the policy's tokenizer; null: model.name_or_path, frozen."""
    min_actors: int = 1
    """Smallest size of the reference scoring actor pool."""
    max_actors: int = 1
    """Largest size of the pool; an autoscaled cluster adds actors up to it."""
    num_gpus_per_actor: float = 0.0
    """GPUs each scoring actor reserves (0 on CPU machines); a whole number above 1 spreads one model over them."""
    batch_size: int = 256
    """Pairs per scoring call, scored rows_per_forward rows at a time (memory is bounded by
    rows_per_forward; a larger call pads less)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Scoring dtype: auto is bfloat16 when the actor has a GPU, float32 otherwise."""
    cache_dir: str | None = "~/.cache/dpo_ray/reference"
    """Where scored pairs are kept by content key (local, NFS, s3:// or gs://); null turns caching off."""
    length_bucketing: bool = True
    """Length-sort each scoring call's rows before cutting them into forwards (each pads little)."""
    rows_per_forward: int = 16
    """Sequences per scoring forward (smaller: less padding and memory; raise it on a roomy GPU)."""
    batch_tokens: int | None = None
    """Token slots per scoring forward in place of rows_per_forward: length-sorted rows grouped to fit it."""
    padding_free: bool = False
    """Score each forward's rows packed into one row, without pads (README: Long, uneven sequences)."""

    def __post_init__(self) -> None:
        require(
            (1 <= self.min_actors <= self.max_actors, f"reference.min_actors={self.min_actors}, reference.max_actors="
             f"{self.max_actors}: need 1 <= min_actors <= max_actors"),
            (self.num_gpus_per_actor >= 0 and self.batch_size >= 1,
             "reference.num_gpus_per_actor must be >= 0 and reference.batch_size >= 1"),
            (self.rows_per_forward >= 1, f"reference.rows_per_forward={self.rows_per_forward}: must be >= 1"),
            (self.batch_tokens is None or self.batch_tokens >= 1, f"reference.batch_tokens={self.batch_tokens}: must be >= 1"),
            (self.num_gpus_per_actor <= 1 or float(self.num_gpus_per_actor).is_integer(),  # Ray: a fraction of 1, or whole GPUs
             f"reference.num_gpus_per_actor={self.num_gpus_per_actor}: above 1 it must be a whole number of GPUs"),
        )


REPORT_TO = ("tensorboard", "mlflow", "wandb")


@dataclass(frozen=True)
class TrainConfig:
    learning_rate: float = 5e-7
    """Peak learning rate of AdamW."""
    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"
    """The schedule after warmup: transformers' (so TRL's) linear, cosine, constant_with_warmup, same rates (train/schedule.py)."""
    warmup_ratio: float = 0.0
    """Share of max_steps spent warming up linearly from 0."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    gradient_clipping: float = 1.0
    """Global gradient-norm clip (0 turns it off)."""
    max_steps: int = 100
    """Optimizer steps to run (when train.epochs is not set); the data repeats as needed."""
    epochs: float | None = None
    """Passes over the train pairs; when set, it replaces max_steps (steps = ceil(epochs x pairs / batch_size))."""
    early_stopping_patience: int | None = None
    """Stop after this many evaluations without improvement of early_stopping_metric."""
    early_stopping_metric: str = "eval/loss"
    """Metric watched by early stopping (any eval/ metric name)."""
    early_stopping_mode: Literal["min", "max"] = "min"
    """Whether a lower (min) or higher (max) early_stopping_metric is better."""
    early_stopping_min_delta: float = 0.0
    """Smallest change that counts as an improvement."""
    stop_loss: float | None = None
    """Stop once the step's train loss falls below this value."""
    nonfinite: Literal["stop", "skip"] = "stop"
    """A step whose loss or gradient norm is not finite stops the run (no model is written), or is
    skipped and counted (train/skipped_steps; DeepSpeed's overflow check drops the update, ZeRO >= 1)."""
    batch_size: int = 32
    """Pairs per optimizer step across all workers (global batch)."""
    micro_batch_size: int = 8
    """Pairs per forward/backward on one worker; accumulation makes up the rest."""
    num_workers: int = 2
    """Ray Train workers (one DeepSpeed rank each)."""
    cpus_per_worker: int | Literal["auto"] = "auto"
    """CPUs each worker reserves, also its torch thread count; auto: on CPU the node's CPUs shared
    among the workers placed on it, on GPU the node's CPUs per GPU (at most 8) for data work."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """Ray placement of the worker group: PACK fills a node first, SPREAD puts workers on different nodes."""
    use_gpu: bool = False
    """One GPU per worker, NCCL, and bf16 when train.bf16 is on."""
    bf16: bool = True
    """bfloat16 mixed precision on GPU (ignored on CPU, where DeepSpeed runs fp32)."""
    zero_stage: Literal["auto", 0, 1, 2, 3] = "auto"
    """DeepSpeed ZeRO stage; auto: 0 for one rank (ZeRO partitions nothing there and costs a third of
    a step), 2 for several (3 with offload_params, 1 for one rank with nonfinite=skip or offload)."""
    offload_optimizer: bool = False
    """ZeRO-Offload: keep optimizer states in CPU memory (GPU runs, ZeRO stage >= 1)."""
    offload_params: bool = False
    """ZeRO-Infinity: keep parameters in CPU memory between uses (GPU runs, ZeRO stage 3)."""
    seed: int = 42
    """Seed for weights-independent randomness (data order, dropout if on)."""
    eval_every: int = 50
    """Evaluate on the held-out pairs every this many steps (also at step 0 and at the end)."""
    logging_steps: int = 10
    """Report train metrics every this many steps."""
    checkpoint_every: int | None = None
    """Checkpoint (model, optimizer, scheduler, RNG, data position) every this many steps."""
    num_to_keep: int = 2
    """Checkpoints kept on storage (the final model export counts as one)."""
    max_failures: int = 0
    """Worker-group restarts allowed; a restarted group resumes from the last checkpoint."""
    resume_from: str | None = None
    """A stopped run's output_dir (or one of its checkpoint folders) to continue, same worker count."""
    group_by_length: bool = True
    """Length-sort each window of micro-batches' pairs, cut, then shuffle the micro-batches (seeded, per epoch)."""
    length_group_window: int = 32
    """Micro-batches per length-grouping window."""
    logps_chunk_size: int | None = None
    """LM head this many positions at a time (recomputed in backward): no full (2B, T, vocab) logits."""
    micro_batch_tokens: int | None = None
    """Token slots per forward/backward in place of micro_batch_size pairs: a worker's pairs of each step
    are length-sorted and cut to fit (padded: 2 x pairs x longest row; packed: real tokens); the loss
    stays the mean over the step's batch_size pairs."""
    padding_free: bool = False
    """Pack each micro-batch's sequences into one row (position_ids restart per sequence, no pads)."""
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Live metric sinks, as TRL's report_to: tensorboard (<output_dir>/tensorboard, written at each
    report), mlflow (MLFLOW_TRACKING_URI, ...) and wandb (WANDB_PROJECT, ...); [] for none."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.report_to) - set(REPORT_TO))
        names = ("max_steps", "batch_size", "micro_batch_size", "num_workers", "eval_every", "logging_steps",
                 "length_group_window", *(() if self.cpus_per_worker == "auto" else ("cpus_per_worker",)),
                 *(() if self.micro_batch_tokens is None else ("micro_batch_tokens",)))
        positive = {name: getattr(self, name) for name in names}
        per_step = self.micro_batch_size * self.num_workers
        require(
            (not unknown, f"train.report_to: unknown {unknown}; choose from {list(REPORT_TO)}"),
            *((value >= 1, f"train.{name}={value}: must be >= 1") for name, value in positive.items()),
            (self.epochs is None or self.epochs > 0, f"train.epochs={self.epochs}: must be > 0"),
            (self.early_stopping_patience is None or self.early_stopping_patience >= 1,
             f"train.early_stopping_patience={self.early_stopping_patience}: must be >= 1"),
            (self.early_stopping_metric.startswith("eval/"),
             f"train.early_stopping_metric={self.early_stopping_metric!r}: must be an eval/ metric, e.g. eval/loss"),
            (self.learning_rate > 0, f"train.learning_rate={self.learning_rate}: must be > 0"),
            (0.0 <= self.warmup_ratio < 1.0, f"train.warmup_ratio={self.warmup_ratio}: must be in [0, 1)"),
            (self.use_gpu or not (self.offload_optimizer or self.offload_params),
             "train.offload_optimizer / train.offload_params move state from GPU to CPU; they need train.use_gpu=true"),
            ((self.checkpoint_every is None or self.checkpoint_every >= 1) and self.num_to_keep >= 1 and self.max_failures >= 0,
             "train.checkpoint_every and train.num_to_keep must be >= 1, train.max_failures >= 0"),
            (not (self.nonfinite == "skip" and self.zero_stage == 0),
             "train.nonfinite=skip needs train.zero_stage >= 1 (DeepSpeed's overflow check skips the update)"),
            (not (self.offload_optimizer and self.zero_stage == 0), "train.offload_optimizer needs train.zero_stage >= 1"),
            (not self.offload_params or self.zero_stage in (3, "auto"), "train.offload_params needs train.zero_stage=3"),
            (self.logps_chunk_size is None or self.resolved_zero_stage() != 3,
             "train.logps_chunk_size does not work with ZeRO-3 (a chunk recomputed in backward finds the LM head's "
             "weight partitioned away); use train.zero_stage=2 or unset logps_chunk_size"),
            (per_step < 1 or self.batch_size % per_step == 0,
             f"train.batch_size={self.batch_size} is not a multiple of train.micro_batch_size x train.num_workers = "
             f"{per_step}; pick a batch size that divides evenly"),
        )

    def resolved_zero_stage(self) -> int:
        """zero_stage with auto resolved: 3 to offload params; one rank 0 (1 if nonfinite=skip/offload needs ZeRO); else 2."""
        if self.zero_stage != "auto":
            return self.zero_stage
        if self.offload_params:
            return 3
        if self.num_workers == 1:
            return 1 if self.nonfinite == "skip" or self.offload_optimizer else 0
        return 2

    def gradient_accumulation_steps(self) -> int:
        return self.batch_size // (self.micro_batch_size * self.num_workers)

    def warmup_steps(self, total_steps: int) -> int:
        return int(round(self.warmup_ratio * total_steps))


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy model (the reference is its frozen copy unless reference.name_or_path): where it loads from, dtype, LoRA."""
    data: DataConfig = field(default_factory=DataConfig)
    """Preference pairs: where they are read from, their layout, tokenization and the eval split."""
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    """The reference log-probs: the scoring actor pool and its cache."""
    loss: LossConfig = field(default_factory=LossConfig)
    """The preference loss (README: Losses) and its modifiers."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Ray Train + DeepSpeed: workers, optimizer, schedule, evaluation, checkpoints, stopping."""
    output_dir: str = "outputs/quickstart"
    """Where model/, metrics.json, config.yaml and Ray's run files go."""
    overwrite_output_dir: bool = False
    """Replace the results of an earlier run in output_dir; without it such a run stops at once."""
    online: OnlineConfig = field(default_factory=OnlineConfig)
    """Iterative DPO rounds (pipelines/online_dpo.py only; README: Iterative DPO)."""

    def __post_init__(self) -> None:
        tokens, mixed = self.train.micro_batch_tokens, sorted(set(self.loss.type) & BATCH_WIDE_LOSSES)
        require(
            (tokens is None or tokens >= 2 * self.data.max_length,
             f"train.micro_batch_tokens={tokens} is below one pair at data.max_length={self.data.max_length} "
             f"(its two rows: {2 * self.data.max_length} tokens); raise it or lower data.max_length"),
            (tokens is None or not mixed, f"train.micro_batch_tokens: loss.type {mixed} reads the whole micro-batch "
             "(a sort or a token mean across its pairs), so a token budget would change its value; use micro_batch_size"),
        )
        attn, t, ref = self.model.attn_implementation, self.train, self.reference
        if needs_gpu(attn):
            require(
                (t.use_gpu, f"model.attn_implementation={attn} runs on GPUs only; set train.use_gpu=true, or use sdpa "
                            "(the default) or eager on CPU"),
                (dtype_name(self.model.dtype, on_gpu=True, bf16=t.bf16) != "float32",
                 f"model.attn_implementation={attn} takes 16-bit weights, and model.dtype={self.model.dtype} "
                 f"(train.bf16={str(t.bf16).lower()}) trains in float32; set model.dtype=bfloat16"),
                (ref.num_gpus_per_actor == 0 or dtype_name(ref.dtype, on_gpu=True) != "float32",
                 f"model.attn_implementation={attn} takes 16-bit weights, and reference.dtype=float32 on the reference's "
                 "GPUs; set reference.dtype=auto (bfloat16) or model.attn_implementation=sdpa"),
            )

    def reference_attention(self) -> str | None:
        """The reference actors' attention kernel: model.attn_implementation, except a GPU-only one when
        the reference is scored on CPU (reference.num_gpus_per_actor=0), which keeps transformers' default."""
        attn = self.model.attn_implementation
        return None if needs_gpu(attn) and self.reference.num_gpus_per_actor == 0 else attn

    def reference_model(self) -> tuple[str, str | None]:
        """The reference model's (name_or_path, revision): reference.name_or_path, else the policy's."""
        if self.reference.name_or_path is None:
            return self.model.name_or_path, self.model.revision
        return self.reference.name_or_path, None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)
