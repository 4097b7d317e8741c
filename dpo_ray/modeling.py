"""Load tokenizer and causal LM from a hub id or a local directory (the same from_pretrained path).

Pure ring: no Ray import.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, *, on_gpu: bool, bf16: bool = True) -> torch.dtype:
    """'auto' -> bfloat16 on GPU (when bf16 is on), float32 on CPU; else the named dtype."""
    if name == "auto":
        return torch.bfloat16 if on_gpu and bf16 else torch.float32
    return DTYPES[name]


def load_tokenizer(name_or_path: str, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    """Tokenizer with a pad token (EOS stands in where the tokenizer has none, as TRL does)."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"model.name_or_path={name_or_path}: tokenizer has no EOS token; DPO appends EOS to completions")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name_or_path: str,
    *,
    revision: str | None = None,
    dtype: torch.dtype = torch.float32,
    disable_dropout: bool = True,
    device_map: str | None = None,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """Causal LM in ``dtype``; dropout zeroed when asked (TRL's disable_dropout default).

    ``device_map="auto"`` spreads the layers over the visible GPUs (needs accelerate).
    """
    model = AutoModelForCausalLM.from_pretrained(name_or_path, revision=revision, dtype=dtype, device_map=device_map,
                                                 trust_remote_code=trust_remote_code)
    if disable_dropout:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    return model


def add_lora(model: PreTrainedModel, *, r: int, alpha: int, dropout: float, target_modules: list[str]) -> Any:
    """Wrap ``model`` with PEFT LoRA adapters; only the adapters train."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                                            target_modules=list(target_modules), task_type="CAUSAL_LM"))
