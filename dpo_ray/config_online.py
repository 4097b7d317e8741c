"""The ``online:`` group: iterative DPO rounds (pipelines/online_dpo.py; README: Iterative DPO).

Pure ring, like config.py, which holds it as ``Config.online``. The offline groups (model, data,
reference, loss, train) configure each round's training; ``online.*`` the rounds around it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dpo_ray.config_check import require


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 32
    """Most tokens sampled per response (a response also ends at the model's EOS)."""
    temperature: float = 1.0
    """Sampling temperature (> 0)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest token set whose probability reaches top_p (1.0: all)."""
    seed: int = 0
    """Base seed: a prompt's samples in round r are drawn from a seed made of it, r and the prompt's text, so
    they do not depend on batching, actor count or which prompts came before."""
    batch_size: int = 16
    """Prompts per generation call of one actor."""
    actors: int = 1
    """Generator actors (each loads the policy once per round)."""
    num_gpus_per_actor: float = 0.0
    """GPUs each generator actor reserves (0 on CPU machines)."""
    generator: str = "dpo_ray.online.generate:TransformersGenerator"
    """The generator class as module:Class; dpo_ray.online.vllm_generator:VLLMGenerator samples with vLLM (GPU, the vllm extra)."""

    def __post_init__(self) -> None:
        require(
            (self.max_new_tokens >= 1, f"online.generation.max_new_tokens={self.max_new_tokens}: must be >= 1"),
            (self.temperature > 0, f"online.generation.temperature={self.temperature}: must be > 0"),
            (0 < self.top_p <= 1, f"online.generation.top_p={self.top_p}: must be in (0, 1]"),
            (self.batch_size >= 1 and self.actors >= 1,
             "online.generation.batch_size and online.generation.actors must be >= 1"),
            (self.num_gpus_per_actor >= 0, "online.generation.num_gpus_per_actor must be >= 0"),
            (":" in self.generator, f"online.generation.generator={self.generator!r}: give it as module:Class"),
        )


@dataclass(frozen=True)
class OnlineConfig:
    rounds: int = 3
    """Rounds of generate -> judge -> pair -> train; each round's exported model is the next round's policy."""
    prompts: str = "pipelines/assets/online_prompts.jsonl"
    """Prompts: a JSONL/JSON/Parquet/CSV file, a saved dataset or a hub id; one prompt per row (text or messages)."""
    prompt_column: str = "prompt"
    """The column holding the prompt."""
    split: str = "train"
    """The split to read when prompts is a hub id or a saved dataset dict."""
    heldout_fraction: float = 0.1
    """Share of prompts (by a hash of the prompt, as data.eval_fraction) kept out of training for evaluation."""
    samples_per_prompt: int = 4
    """K: responses sampled per training prompt each round."""
    eval_samples_per_prompt: int = 2
    """Responses sampled per held-out prompt for the round's evaluation (same seeds every round)."""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    """Sampling and the generator actor pool."""
    judge: str = "dpo_ray.online.judges:sentiment_match"
    """A Python function as module:function (prompts, responses) -> scores, or a reward model
    (AutoModelForSequenceClassification) as a local dir or hub id."""
    judge_batch_size: int = 64
    """(prompt, response) rows per judge call."""
    judge_actors: int = 1
    """Judge actors."""
    judge_num_gpus_per_actor: float = 0.0
    """GPUs each judge actor reserves (a reward model on GPU)."""
    pairing: Literal["best_vs_worst", "margin"] = "best_vs_worst"
    """best_vs_worst: one pair per prompt, its best against its worst sample; margin: every pair whose
    scores differ by more than online.margin."""
    margin: float = 0.0
    """The least score gap that makes a pair (pairing=margin; best_vs_worst skips a group whose gap is not above it)."""
    reference: Literal["initial", "previous"] = "initial"
    """The reference model of each round's training: the starting model throughout, or the round's starting policy."""

    def __post_init__(self) -> None:
        require(
            (self.rounds >= 1, f"online.rounds={self.rounds}: must be >= 1"),
            (0 < self.heldout_fraction < 1, f"online.heldout_fraction={self.heldout_fraction}: must be in (0, 1)"),
            (self.samples_per_prompt >= 2, f"online.samples_per_prompt={self.samples_per_prompt}: a pair needs >= 2"),
            (self.eval_samples_per_prompt >= 1, "online.eval_samples_per_prompt must be >= 1"),
            (self.judge_batch_size >= 1 and self.judge_actors >= 1, "online.judge_batch_size and online.judge_actors must be >= 1"),
            (self.judge_num_gpus_per_actor >= 0, "online.judge_num_gpus_per_actor must be >= 0"),
            (self.margin >= 0, f"online.margin={self.margin}: must be >= 0"),
        )
