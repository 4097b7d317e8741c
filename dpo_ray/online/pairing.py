"""Preference pairs from judged samples (pure ring).

A group is one prompt's K scored responses. ``best_vs_worst`` makes at most one pair per group (its
highest against its lowest score: RLHFlow's iterative DPO, self-rewarding LMs); ``margin`` makes every
pair whose scores differ by more than the margin. A group that yields no pair is counted: all
scores equal (``ties``: an all-equal group) or no gap above the margin (``below_margin``).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Any


@dataclass(frozen=True)
class PairingStats:
    groups: int
    pairs: int
    ties: int  # groups whose scores are all equal (no preference to learn)
    below_margin: int  # groups with some gap, none above the margin
    duplicate_responses: int  # pairs not made because the two texts are the same


def pairs_for_group(responses: list[str], scores: list[float], rule: str, margin: float) -> tuple[list[tuple[int, int]], str]:
    """(chosen index, rejected index) pairs for one group, and why none ('' when some): 'tie' or 'below_margin'.

    Ties among the best (or worst) go to the lowest index, so the result is deterministic.
    """
    if max(scores) == min(scores):
        return [], "tie"
    if rule == "best_vs_worst":
        best = max(range(len(scores)), key=lambda i: (scores[i], -i))
        worst = min(range(len(scores)), key=lambda i: (scores[i], i))
        return ([(best, worst)], "") if scores[best] - scores[worst] > margin else ([], "below_margin")
    found = [(i, j) if scores[i] > scores[j] else (j, i)
             for i, j in combinations(range(len(scores)), 2) if abs(scores[i] - scores[j]) > margin]
    return found, "" if found else "below_margin"


def completion(prompt: str | list[dict[str, str]], text: str) -> str | list[dict[str, str]]:
    """A response in its prompt's format: text after a text prompt, an assistant turn after messages."""
    return [{"role": "assistant", "content": text}] if isinstance(prompt, list) else text


def build_pairs(groups: list[dict[str, Any]], rule: str, margin: float) -> tuple[list[dict[str, Any]], PairingStats]:
    """``groups``: {prompt, responses: [str], scores: [float]} -> pair rows {prompt, chosen, rejected,
    chosen_score, rejected_score} (the offline pipeline's standard or conversational format) and the counts."""
    rows: list[dict[str, Any]] = []
    ties = below = same_text = 0
    for group in groups:
        responses, scores = group["responses"], [float(s) for s in group["scores"]]
        found, why = pairs_for_group(responses, scores, rule, margin)
        ties += why == "tie"
        below += why == "below_margin"
        for i, j in found:
            if responses[i] == responses[j]:  # a judge that scores the same text twice differently: not a preference
                same_text += 1
                continue
            prompt = group["prompt"]
            rows.append({"prompt": prompt, "chosen": completion(prompt, responses[i]),
                         "rejected": completion(prompt, responses[j]), "chosen_score": scores[i], "rejected_score": scores[j]})
    return rows, PairingStats(len(groups), len(rows), ties, below, same_text)
