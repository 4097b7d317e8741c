"""Step-0 invariants without Ray: scorer and trainer log-probs agree; the loss is ln 2."""

from __future__ import annotations

import math

import numpy as np
import torch

from dpo_ray.collate import collate_pairs
from dpo_ray.data import tokenize_batch
from dpo_ray.logprobs import forward_sequence_stats, split_pairs
from dpo_ray.losses import preference_loss
from dpo_ray.modeling import load_model
from dpo_ray.reference import ReferenceScorer


def _batch(tokenizer, rows):
    text = {k: np.array([r[k] for r in rows]) for k in ("prompt", "chosen", "rejected")}
    text["source"] = np.array([f"f:{i}" for i in range(len(rows))])
    text["error"] = np.array([""] * len(rows))
    return tokenize_batch(tokenizer, text, max_length=40, eval_fraction=0.1)


def test_scorer_equals_trainer_logps_and_loss_is_ln2(tiny_model_dir, tokenizer, pair_rows) -> None:
    batch = _batch(tokenizer, pair_rows[:12])
    scored = ReferenceScorer(tiny_model_dir, None, "float32", use_gpu=False)(batch)  # one batch of 12
    policy = load_model(tiny_model_dir, dtype=torch.float32)
    policy.train()  # the trainer's mode; dropout is off, so it must not matter
    for part in (slice(0, 4), slice(4, 12)):  # other batch compositions, other padding
        tensors = collate_pairs(batch["prompt_ids"][part], batch["chosen_ids"][part], batch["rejected_ids"][part], pad_id=tokenizer.pad_token_id)
        with torch.no_grad():
            chosen, rejected = split_pairs(forward_sequence_stats(policy, tensors).logps)
        ref_c = torch.from_numpy(scored["ref_chosen_logps"][part].astype(np.float32))
        ref_r = torch.from_numpy(scored["ref_rejected_logps"][part].astype(np.float32))
        assert torch.allclose(chosen, ref_c, atol=1e-5, rtol=0)
        assert torch.allclose(rejected, ref_r, atol=1e-5, rtol=0)
        loss = preference_loss(chosen, rejected, ref_c, ref_r, loss_type="sigmoid", beta=0.1).losses.mean()
        assert abs(loss.item() - math.log(2)) < 1e-4
