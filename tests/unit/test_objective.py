"""Every loss through the trainer's batch objective with a real (tiny) model: finite loss and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from dpo_ray.config import LABEL_SMOOTHING_LOSSES, LOSS_TYPES
from dpo_ray.config_load import load_config
from dpo_ray.modeling import load_model
from dpo_ray.train.objective import REF_COLUMNS, batch_objective
from dpo_ray.reference.scorer import ReferenceScorer
from test_invariants import tokenized


@pytest.fixture(scope="module")
def scored_batch(tiny_model_dir, tokenizer, pair_rows):
    batch = tokenized(tiny_model_dir, pair_rows[:6])
    return ReferenceScorer(tiny_model_dir, None, "float32", use_gpu=False)(batch)


CONFIGS = [[f"loss.type={name}"] + (["loss.label_smoothing=0.1"] if name in LABEL_SMOOTHING_LOSSES else []) for name in LOSS_TYPES]
CONFIGS += [
    ["loss.type=[sigmoid,sft]", "loss.weights=[1.0,0.5]", "loss.wpo=true"],
    ["loss.type=[sigmoid,bco_pair,sft]", "loss.weights=[0.8,0.2,1.0]", "loss.ld_alpha=0.5"],
    ["loss.type=ipo", "loss.f_divergence=alpha_divergence"],
]


@pytest.mark.parametrize("overrides", CONFIGS, ids=lambda o: ",".join(x.split("=", 1)[1] for x in o))
def test_every_loss_runs_with_a_model(overrides, scored_batch, tiny_model_dir, tokenizer) -> None:
    cfg = load_config(None, overrides)
    model = load_model(tiny_model_dir)
    batch = dict(scored_batch)
    if cfg.loss.reference_free():  # reference-free runs carry no reference columns at all
        batch = {k: v for k, v in batch.items() if k not in REF_COLUMNS}
    out = batch_objective(model, batch, cfg.loss, pad_id=tokenizer.pad_token_id, device=torch.device("cpu"))
    loss = out.result.losses.mean()
    assert math.isfinite(loss.item())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_ld_alpha_one_is_plain_dpo(scored_batch, tiny_model_dir, tokenizer) -> None:
    model = load_model(tiny_model_dir)
    with torch.no_grad():
        torch.nn.init.normal_(model.lm_head.weight, std=0.5)  # move the policy away from the reference
    kw = dict(pad_id=tokenizer.pad_token_id, device=torch.device("cpu"))
    with torch.no_grad():
        plain = batch_objective(model, scored_batch, load_config(None, []).loss, **kw).result.losses
        ld1 = batch_objective(model, scored_batch, load_config(None, ["loss.ld_alpha=1.0"]).loss, **kw).result.losses
        ld0 = batch_objective(model, scored_batch, load_config(None, ["loss.ld_alpha=0.0"]).loss, **kw).result.losses
    assert torch.allclose(plain, ld1, atol=1e-6)
    assert not torch.allclose(plain, ld0, atol=1e-6)  # pairs of unequal length change
