"""A judge and a generator given by import path to the online pipeline in tests (tests/ on the
PYTHONPATH of the driver and of Ray's workers, as a user's own module would be).

``judge`` is the shipped sentiment judge until the environment sets DPO_TEST_JUDGE_NAN=1: then every
score is NaN (a broken reward function), with the same config. ``EmptyGenerator`` ends every sample
at once (a policy that only says EOS).
"""

from __future__ import annotations

import os
from typing import Any

from dpo_ray.online.judges import sentiment_match


def judge(prompts: list[Any], responses: list[str]) -> list[float]:
    if os.environ.get("DPO_TEST_JUDGE_NAN") == "1":
        return [float("nan")] * len(responses)
    return sentiment_match(prompts, responses)


class EmptyGenerator:
    def __init__(self, name_or_path: str, **settings: Any) -> None:
        self.name_or_path = name_or_path

    def sample(self, prompt_ids: list[list[int]], seeds: list[int], n: int) -> list[list[list[int]]]:
        return [[[] for _ in range(n)] for _ in prompt_ids]
