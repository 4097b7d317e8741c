"""Sampling K responses per prompt from the current policy (worker ring; no Ray import).

``GenerateRows`` is the callable class Ray Data runs on the generator actor pool. It turns each
prompt into the token ids the training stage will give the same prompt (data/tokenize.py: BOS as the
tokenizer adds it for text, the chat template with the generation prompt for messages, the same
max_prompt_length cut), asks the generator class (``online.generation.generator``) for completion
ids, and decodes them. A generator class is constructed as
``Class(name_or_path, *, use_gpu, dtype, trust_remote_code, max_new_tokens, temperature, top_p)``
and has ``sample(prompt_ids, seeds, n) -> completion ids``: n lists per prompt, drawn from
``seeds[i]``, ending at EOS or max_new_tokens.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from dpo_ray.data.tokenize import PairTokenizer

Ids = list[int]


def sample_seed(base: int, round_index: int, prompt_key: str, purpose: str) -> int:
    """A prompt's sampling seed: its text, the round and the purpose ('train', 'heldout'), never its position."""
    digest = hashlib.sha256(f"{base}\0{round_index}\0{purpose}\0{prompt_key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def prompt_token_ids(pairs: PairTokenizer, prompt: str | list[dict[str, str]], max_prompt_length: int | None,
                     truncation_mode: str) -> Ids:
    """The prompt's ids as training lays them out (data/tokenize.py: PairTokenizer, tokenize_pair)."""
    if isinstance(prompt, list):
        ids, bos = pairs.encode(pairs.render(prompt, add_generation_prompt=True)), None
    else:
        ids, bos = pairs.encode(prompt), pairs.bos_id
    if max_prompt_length is not None and len(ids) > max_prompt_length:
        ids = ids[:max_prompt_length] if truncation_mode == "keep_start" else ids[-max_prompt_length:]
    if bos is not None and ids[:1] != [bos]:
        ids = [bos] + ids
    return ids


_MARK = "Xq7Zv"  # an assistant turn's content, found again in the rendered text (no template writes it)


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The special token the chat template closes an assistant turn with (Llama 3's <|eot_id|>,
    Phi-3's <|end|>, Qwen's <|im_end|>), where it is not EOS; None without a chat template."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        turn = [{"role": "user", "content": "a"}]
        prompt = tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(turn + [{"role": "assistant", "content": _MARK}], tokenize=False)
    except Exception:  # a template that needs other roles or fields: EOS alone ends a sample
        return None
    tail = full[len(prompt):] if full.startswith(prompt) else full
    ids = tokenizer(tail[tail.rfind(_MARK) + len(_MARK):], add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    return next((t for t in ids if t in special), None)


def stop_ids(tokenizer: Any, generation_eos: int | list[int] | None) -> list[int]:
    """The ids a sample ends at: the tokenizer's EOS, the model's generation_config EOS ids (an
    instruct model's list), and the chat template's end of turn; EOS first."""
    found = [tokenizer.eos_token_id, *(generation_eos if isinstance(generation_eos, list) else [generation_eos]),
             end_of_turn_id(tokenizer)]
    return list(dict.fromkeys(t for t in found if t is not None))


def until_stop(ids: Ids, stops: list[int]) -> Ids:
    """A sample's ids before the first stop id (all of them when none comes)."""
    return ids[:next((i for i, t in enumerate(ids) if t in stops), len(ids))]


class TransformersGenerator:
    """transformers ``generate`` with sampling, one prompt per call so that a prompt's samples depend
    on its seed alone (not on what it was batched with)."""

    def __init__(self, name_or_path: str, *, use_gpu: bool, dtype: str, trust_remote_code: bool, max_new_tokens: int,
                 temperature: float, top_p: float) -> None:
        import torch

        from dpo_ray.modeling import load_model, load_tokenizer, resolve_dtype

        self.torch = torch
        self.device = torch.device("cuda" if use_gpu else "cpu")
        tokenizer = load_tokenizer(name_or_path, None, trust_remote_code)
        self.model = load_model(name_or_path, revision=None, dtype=resolve_dtype(dtype, on_gpu=use_gpu),
                                disable_dropout=True, trust_remote_code=trust_remote_code).to(self.device).eval()
        self.stop_ids = stop_ids(tokenizer, self.model.generation_config.eos_token_id)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        self.settings = {"do_sample": True, "max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
                         "top_k": 0, "pad_token_id": self.pad_id, "eos_token_id": self.stop_ids}

    def sample(self, prompt_ids: list[Ids], seeds: list[int], n: int) -> list[list[Ids]]:
        out = []
        with self.torch.no_grad():
            for ids, seed in zip(prompt_ids, seeds):
                self.torch.manual_seed(seed)
                inputs = self.torch.tensor([ids], device=self.device)
                generated = self.model.generate(input_ids=inputs, attention_mask=self.torch.ones_like(inputs),
                                                num_return_sequences=n, **self.settings)
                out.append([self.until_eos(row[len(ids):].tolist()) for row in generated])
        return out

    def until_eos(self, ids: Ids) -> Ids:
        return until_stop(ids, self.stop_ids)


class GenerateRows:
    """Callable class for map_batches: rows {prompt (JSON), seed} -> {prompt, sample, response, finished}, n per prompt."""

    def __init__(self, name_or_path: str, *, generator: str, n: int, use_gpu: bool, dtype: str, trust_remote_code: bool,
                 max_prompt_length: int | None, truncation_mode: str, settings: dict[str, Any]) -> None:
        from dpo_ray.modeling import load_tokenizer
        from dpo_ray.online.judges import import_callable

        self.tokenizer = load_tokenizer(name_or_path, None, trust_remote_code)
        self.pairs = PairTokenizer(self.tokenizer, jointly=False)
        self.cut = (max_prompt_length, truncation_mode)
        self.n = n
        cls = import_callable(generator, "online.generation.generator")
        self.generator = cls(name_or_path, use_gpu=use_gpu, dtype=dtype, trust_remote_code=trust_remote_code, **settings)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        prompts = [str(p) for p in batch["prompt"]]
        ids = [prompt_token_ids(self.pairs, json.loads(p), *self.cut) for p in prompts]
        samples = self.generator.sample(ids, [int(s) for s in batch["seed"]], self.n)
        out: dict[str, list[Any]] = {"prompt": [], "sample": [], "response": [], "tokens": []}
        for prompt, completions in zip(prompts, samples):
            for k, completion in enumerate(completions):
                out["prompt"].append(prompt)
                out["sample"].append(k)
                out["response"].append(self.tokenizer.decode(completion, skip_special_tokens=True))
                out["tokens"].append(len(completion))
        return {key: np.asarray(values) for key, values in out.items()}
