"""A vLLM generator for the online rounds on GPU (worker ring; the optional ``vllm`` package).

Set ``online.generation.generator=dpo_ray.online.vllm_generator:VLLMGenerator`` and
``online.generation.num_gpus_per_actor=1``. It keeps GenerateRows's contract: completion ids per
prompt, ``n`` per prompt, each prompt's draws from its own seed (vLLM's per-request seed), ending
before EOS or the chat template's end of turn (generate.stop_ids). Not run in this repository's CI
(no GPU, no vllm wheel for CPU).
"""

from __future__ import annotations

from dpo_ray.config_check import ConfigError
from dpo_ray.online.generate import stop_ids, until_stop

Ids = list[int]


def generation_eos(name_or_path: str, trust_remote_code: bool) -> int | list[int] | None:
    """The model's generation_config EOS id(s), None where it has no generation_config.json."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code).eos_token_id
    except OSError:
        return None


class VLLMGenerator:
    def __init__(self, name_or_path: str, *, use_gpu: bool, dtype: str, trust_remote_code: bool, max_new_tokens: int,
                 temperature: float, top_p: float) -> None:
        try:
            from vllm import LLM, SamplingParams
        except ImportError as err:
            raise ConfigError("online.generation.generator=...VLLMGenerator needs vllm (pip install vllm) on the "
                              "generator's nodes; or use dpo_ray.online.generate:TransformersGenerator") from err
        if not use_gpu:
            raise ConfigError("online.generation.generator=...VLLMGenerator runs on a GPU: set "
                              "online.generation.num_gpus_per_actor=1")
        self.params = SamplingParams
        self.settings = {"temperature": temperature, "top_p": top_p, "max_tokens": max_new_tokens}
        self.llm = LLM(model=name_or_path, dtype="auto" if dtype == "auto" else dtype, trust_remote_code=trust_remote_code)
        self.stop_ids = stop_ids(self.llm.get_tokenizer(), generation_eos(name_or_path, trust_remote_code))
        self.settings["stop_token_ids"] = self.stop_ids

    def sample(self, prompt_ids: list[Ids], seeds: list[int], n: int) -> list[list[Ids]]:
        params = [self.params(n=n, seed=seed, **self.settings) for seed in seeds]
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
        return [[self.until_eos(list(c.token_ids)) for c in out.outputs] for out in outputs]

    def until_eos(self, ids: Ids) -> Ids:
        return until_stop(ids, self.stop_ids)
