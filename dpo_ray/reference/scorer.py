"""Reference scorer: a plain callable class; reference/stage.py turns it into a Ray Data actor pool.

Worker ring: no Ray import here either; Ray only calls it through map_batches.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from dpo_ray.faults import fires_once
from dpo_ray.modeling import check_packed_attention, load_model, load_tokenizer, resolve_dtype
from dpo_ray.reference.placement import check_on_gpus, spreads
from dpo_ray.train.collate import collate_pairs
from dpo_ray.train.logprobs import sorted_sequence_stats, split_pairs


class ReferenceScorer:
    """Loads the frozen reference model once per actor; adds ref_chosen_logps / ref_rejected_logps."""

    def __init__(self, name_or_path: str, revision: str | None, dtype: str, use_gpu: bool,
                 trust_remote_code: bool = False, rows_per_forward: int = 16, length_bucketing: bool = True,
                 faults: dict[str, Any] | None = None, num_gpus: float = 1.0, batch_tokens: int | None = None,
                 padding_free: bool = False, attn_implementation: str | None = None) -> None:
        # ``num_gpus``: the GPUs this actor holds (reference.num_gpus_per_actor); above 1 one model is
        # spread over them (accelerate's device_map), for a reference model larger than one GPU.
        # ``faults``: the test switch (dpo_ray.faults); an actor that fires dies, Ray restarts it
        # and retries its batch.
        self.faults, self.calls = faults or {}, 0
        # Each call's 2B rows run rows_per_forward at a time, length-sorted with length_bucketing.
        # With batch_tokens, as many rows as fit that many token slots; padding_free packs them into one row.
        self.rows_per_forward, self.length_bucketing = rows_per_forward, length_bucketing
        self.batch_tokens, self.padding_free = batch_tokens, padding_free
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.pad_id = load_tokenizer(name_or_path, revision, trust_remote_code).pad_token_id
        spread = use_gpu and spreads(num_gpus)
        if spread and torch.cuda.device_count() < int(num_gpus):
            raise RuntimeError(f"reference: the actor sees {torch.cuda.device_count()} GPUs, reference.num_gpus_per_actor="
                               f"{num_gpus:g} asked for more; check CUDA_VISIBLE_DEVICES on the node")
        self.model = load_model(
            name_or_path, revision=revision, dtype=resolve_dtype(dtype, on_gpu=use_gpu), disable_dropout=True,
            device_map="auto" if spread else None, trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation,
        )
        if spread:
            check_on_gpus(((n, p.device) for n, p in self.model.named_parameters()), int(num_gpus), name_or_path)
            # Token ids go where the embedding is (the first layer: no extra copy); accelerate's hooks move
            # the hidden states layer to layer, and sorted_sequence_stats reads the logits where they land.
            self.device = self.model.get_input_embeddings().weight.device
        else:
            self.model.to(self.device)
        self.model.eval()
        self.name_or_path = name_or_path

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        if fires_once(self.faults, "reference", self.calls):
            os._exit(1)
        if self.padding_free and self.calls == 1:  # in a call, not __init__: Ray hands a call's error to the driver
            check_packed_attention(self.model, self.name_or_path, "reference.padding_free")
        tensors = collate_pairs(batch["prompt_ids"], batch["chosen_ids"], batch["rejected_ids"], pad_id=self.pad_id)
        tensors = {k: v.to(self.device) for k, v in tensors.items()}
        stats, pads = sorted_sequence_stats(self.model, tensors, rows_per_forward=self.rows_per_forward,
                                            by_length=self.length_bucketing, batch_tokens=self.batch_tokens,
                                            padding_free=self.padding_free)
        chosen, rejected = split_pairs(stats.logps.double().cpu())
        chosen_prefix, rejected_prefix = split_pairs(stats.prefix_logps.double().cpu())
        return {
            **batch,
            "ref_chosen_logps": chosen.numpy(), "ref_rejected_logps": rejected.numpy(),
            # LD-DPO reads the shared-length prefix; keeping it makes the cache independent of alpha.
            "ref_chosen_prefix_logps": chosen_prefix.numpy(), "ref_rejected_prefix_logps": rejected_prefix.numpy(),
            # Pad tokens this row cost in its forward: the length-bucketing figure of merit.
            "ref_pad_tokens": pads.cpu().view(2, -1).sum(0).numpy(),
            "ref_tokens": tensors["attention_mask"].sum(-1).cpu().view(2, -1).sum(0).numpy(),  # real tokens scored
        }
