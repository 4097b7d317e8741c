"""Judges: score (prompt, response) rows (worker ring; no Ray import).

``online.judge`` is either a Python function given as ``module:function`` with the signature
``(prompts: list[str | list[dict]], responses: list[str]) -> list[float]`` (rule-based rewards,
tests), or a reward model, ``AutoModelForSequenceClassification`` from a local dir or hub id, whose
first logit is the score. ``JudgeRows`` is the callable class Ray Data runs on the judge actor pool.
"""

from __future__ import annotations

import importlib
import json
import math
import os
from typing import Any, Callable

import numpy as np

from dpo_ray.config_check import ConfigError
from dpo_ray.toy import NEGATIVE, POSITIVE

Judge = Callable[[list[Any], list[str]], list[float]]


class JudgeError(ValueError):
    """The judge returned something that is not one finite score per row."""


def sentiment_match(prompts: list[Any], responses: list[str]) -> list[float]:
    """The shipped rule-based judge for the quickstart's review prompts: the number of the asked
    sentiment's words in the response minus the other sentiment's (a prompt that asks for neither scores 0)."""
    scores = []
    for prompt, response in zip(prompts, responses):
        text = prompt if isinstance(prompt, str) else " ".join(m["content"] for m in prompt)
        words = [w.strip(".,!?").lower() for w in response.split()]
        good = sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)
        scores.append(float(good if "positive" in text else -good if "negative" in text else 0))
    return scores


def is_import_path(spec: str) -> bool:
    """module:function (no such local path), as opposed to a reward model dir or hub id."""
    module, sep, name = spec.partition(":")
    return bool(sep and module and name) and not os.path.exists(spec)


def import_callable(spec: str, key: str) -> Callable[..., Any]:
    """The object ``module:name`` names; ConfigError (one line, naming ``key``) when it cannot be had."""
    module_name, _, name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"{key}={spec}: cannot import module {module_name!r} ({err}); "
                          "give an importable module:function (on the PYTHONPATH of every node)") from err
    obj = getattr(module, name, None)
    if obj is None or not callable(obj):
        raise ConfigError(f"{key}={spec}: module {module_name!r} has no callable {name!r}")
    return obj


def check_scores(scores: Any, rows: int, spec: str) -> list[float]:
    """One finite float per row, or JudgeError naming the first bad one."""
    try:
        values = [float(s) for s in scores]
    except (TypeError, ValueError) as err:
        raise JudgeError(f"online.judge={spec} returned {type(scores).__name__}, not a list of numbers ({err})") from err
    if len(values) != rows:
        raise JudgeError(f"online.judge={spec} returned {len(values)} scores for {rows} rows: return one score per row")
    bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
    if bad is not None:
        raise JudgeError(f"online.judge={spec} returned a non-finite score ({values[bad]}) for a row; "
                         "the judge must return finite numbers")
    return values


class RewardModelJudge:
    """A sequence-classification reward model: prompt and response rendered through the tokenizer's
    chat template where it has one (as a user turn and an assistant turn), else concatenated."""

    def __init__(self, name_or_path: str, use_gpu: bool, batch_size: int = 8) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.torch = torch
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        dtype = torch.bfloat16 if use_gpu else torch.float32
        self.model = AutoModelForSequenceClassification.from_pretrained(name_or_path, dtype=dtype).to(self.device).eval()
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"  # the score is read at each row's last real token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size = batch_size

    def text(self, prompt: Any, response: str) -> str:
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)
        return (prompt if isinstance(prompt, str) else " ".join(m["content"] for m in prompt)) + response

    def __call__(self, prompts: list[Any], responses: list[str]) -> list[float]:
        texts = [self.text(p, r) for p, r in zip(prompts, responses)]
        templated = bool(self.tokenizer.chat_template)  # the rendered text holds its BOS already: add none
        scores: list[float] = []
        with self.torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(texts[i:i + self.batch_size], return_tensors="pt", padding=True,
                                     add_special_tokens=not templated).to(self.device)
                scores.extend(self.model(**enc).logits[:, 0].float().tolist())
        return scores


def load_judge(spec: str, use_gpu: bool = False) -> Judge:
    """The judge ``online.judge`` names: an imported function, or a reward model."""
    if is_import_path(spec):
        return import_callable(spec, "online.judge")
    return RewardModelJudge(spec, use_gpu)


class JudgeRows:
    """Callable class for map_batches: adds ``score`` to rows {prompt (JSON), response}, and ``error``:
    '' or, for every row of a batch the judge got wrong (not one finite score per row), the reason.
    The reason travels as data, as the data stage's row errors do (data/parse.py): an exception
    raised here would reach the driver as Ray Data's multi-line error logs, not as one line."""

    def __init__(self, spec: str, use_gpu: bool) -> None:
        self.spec = spec
        self.judge = load_judge(spec, use_gpu)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        prompts = [json.loads(p) for p in batch["prompt"]]
        responses = [str(r) for r in batch["response"]]
        try:
            scores, error = check_scores(self.judge(prompts, responses), len(responses), self.spec), ""
        except JudgeError as err:
            scores, error = [math.nan] * len(responses), str(err)
        return {**batch, "score": np.asarray(scores, dtype=np.float64), "error": np.asarray([error] * len(responses))}
