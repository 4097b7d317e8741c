"""One micro-batch's DPO objective: collate, forward, log-probs, modifiers, loss.

Pure ring: no Ray import. The trainer calls it for training and evaluation; tests call it with a
plain model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dpo_ray.config import LossConfig
from dpo_ray.train.collate import collate_pairs, count_tokens, pack_rows
from dpo_ray.train.logprobs import SequenceStats, forward_sequence_stats, split_pairs
from dpo_ray.train.losses import PairLogps, PreferenceLoss, ld_logps, preference_loss, wpo_weights

REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps", "ref_chosen_prefix_logps", "ref_rejected_prefix_logps")


@dataclass
class BatchObjective:
    result: PreferenceLoss
    stats: SequenceStats
    num_tokens: int
    """Non-pad tokens in the (2B, T) batch."""
    padded_tokens: int
    """The token slots the forward computed, pads included: 2B x T padded, the real tokens packed."""


def batch_objective(
    model: torch.nn.Module, batch: dict[str, np.ndarray], loss: LossConfig, *, pad_id: int, device: torch.device,
    chunk_size: int | None = None, padding_free: bool = False,
) -> BatchObjective:
    """Numpy batch of token ids (+ cached reference columns) -> per-pair losses and stats; with
    ``padding_free`` its 2B sequences run packed in one row (collate.pack_rows)."""
    tensors = collate_pairs(batch["prompt_ids"], batch["chosen_ids"], batch["rejected_ids"], pad_id=pad_id)
    if padding_free:
        tensors = pack_rows(tensors)
    tensors = {k: v.to(device) for k, v in tensors.items()}
    stats = forward_sequence_stats(model, tensors, with_wpo=loss.wpo, chunk_size=chunk_size)
    result = preference_loss(pair_logps(stats, batch, loss, device=device), loss)
    return BatchObjective(result=result, stats=stats, num_tokens=count_tokens(tensors),
                          padded_tokens=int(tensors["input_ids"].numel()))


def pair_logps(stats: SequenceStats, batch: dict[str, np.ndarray], loss: LossConfig, *, device: torch.device) -> PairLogps:
    """The policy's (2B,) stats (chosen rows, then rejected) and the batch's cached reference columns
    -> the (B,) pairs the loss reads, with LD-DPO (loss.ld_alpha) and WPO (loss.wpo) applied."""
    chosen, rejected = split_pairs(stats.logps)
    if loss.ld_alpha is not None:
        chosen_prefix, rejected_prefix = split_pairs(stats.prefix_logps)
        chosen, rejected = ld_logps(chosen, chosen_prefix, loss.ld_alpha), ld_logps(rejected, rejected_prefix, loss.ld_alpha)
    ref_chosen = ref_rejected = None
    if not loss.reference_free():
        ref_chosen, ref_rejected = reference_logps(batch, loss, device=device)
    pair_weights = None
    if loss.wpo:
        assert stats.wpo_logw is not None  # forward_sequence_stats(with_wpo=loss.wpo)
        pair_weights = wpo_weights(*split_pairs(stats.wpo_logw))
    chosen_lengths, rejected_lengths = split_pairs(stats.num_tokens)
    return PairLogps(
        policy_chosen_logps=chosen, policy_rejected_logps=rejected, ref_chosen_logps=ref_chosen,
        ref_rejected_logps=ref_rejected, chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths,
        pair_weights=pair_weights,
    )


def reference_logps(batch: dict[str, np.ndarray], loss: LossConfig, *, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The cached REF_COLUMNS of the batch -> (B,) float32 reference chosen and rejected log-probs, LD-DPO applied."""
    ref = {k: torch.as_tensor(np.asarray(batch[k], dtype=np.float32), device=device) for k in REF_COLUMNS}
    ref_chosen, ref_rejected = ref["ref_chosen_logps"], ref["ref_rejected_logps"]
    if loss.ld_alpha is not None:
        ref_chosen = ld_logps(ref_chosen, ref["ref_chosen_prefix_logps"], loss.ld_alpha)
        ref_rejected = ld_logps(ref_rejected, ref["ref_rejected_prefix_logps"], loss.ld_alpha)
    return ref_chosen, ref_rejected
