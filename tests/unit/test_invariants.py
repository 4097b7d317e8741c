"""Step-0 invariants without Ray: scorer and trainer log-probs agree; the loss is ln 2."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dpo_ray.config import LossConfig
from dpo_ray.train.collate import collate_pairs
from dpo_ray.data.parse import ROW_FIELDS
from dpo_ray.data.tokenize import TokenizeRows
from dpo_ray.train.logprobs import forward_sequence_stats, split_pairs
from dpo_ray.train.losses import PairLogps, preference_loss
from dpo_ray.modeling import load_model
from dpo_ray.reference.scorer import ReferenceScorer


def tokenized(model_dir: str, rows: list[dict[str, str]], max_length: int = 40):
    """Text rows -> the tokenizer actor's output, as Ray Data would hand it on."""
    full = [{**r, "kind": "text", "source": f"f:{i}", "drop_reason": "", "drop_detail": "", "error": ""} for i, r in enumerate(rows)]
    return TokenizeRows(model_dir, None, max_length, None, "keep_end", 0.1)({k: np.array([r[k] for r in full]) for k in ROW_FIELDS})


def conversational(model_dir: str, max_length: int):
    from pathlib import Path

    from dpo_ray.data.parse import parse_file

    path = Path(__file__).resolve().parents[1] / "fixtures" / "conversational.jsonl"
    rows = parse_file(str(path), path.read_bytes(), fmt="auto", columns={"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"})[:8]
    return TokenizeRows(model_dir, None, max_length, None, "keep_end", 0.1)({k: np.array([r[k] for r in rows]) for k in ROW_FIELDS})


@pytest.mark.parametrize("kind", ["text", "conversational"])
def test_scorer_equals_trainer_logps_and_loss_is_ln2(kind, tiny_model_dir, tokenizer, pair_rows) -> None:
    # max_length 24 truncates some completions (asserted), so truncated rows are covered.
    batch = tokenized(tiny_model_dir, pair_rows[:12], max_length=24) if kind == "text" else conversational(tiny_model_dir, 44)
    assert list(batch["drop_reason"]) == [""] * len(batch["drop_reason"])
    assert any(c[-1] != tokenizer.eos_token_id for c in batch["chosen_ids"])  # some rows were cut
    scored = ReferenceScorer(tiny_model_dir, None, "float32", use_gpu=False)(batch)  # one batch of 12
    policy = load_model(tiny_model_dir, dtype=torch.float32)
    policy.train()  # the trainer's mode; dropout is off, so it must not matter
    for part in (slice(0, 4), slice(4, None)):  # other batch compositions, other padding
        tensors = collate_pairs(batch["prompt_ids"][part], batch["chosen_ids"][part], batch["rejected_ids"][part], pad_id=tokenizer.pad_token_id)
        with torch.no_grad():
            chosen, rejected = split_pairs(forward_sequence_stats(policy, tensors).logps)
        ref_c = torch.from_numpy(scored["ref_chosen_logps"][part].astype(np.float32))
        ref_r = torch.from_numpy(scored["ref_rejected_logps"][part].astype(np.float32))
        assert torch.allclose(chosen, ref_c, atol=1e-5, rtol=0)
        assert torch.allclose(rejected, ref_r, atol=1e-5, rtol=0)
        loss = preference_loss(PairLogps(chosen, rejected, ref_c, ref_r), LossConfig(type=["sigmoid"], beta=0.1)).losses.mean()
        assert abs(loss.item() - math.log(2)) < 1e-4
