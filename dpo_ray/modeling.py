"""Load tokenizer and causal LM from a hub id or a local directory (from_pretrained; with ZeRO-3, built
partitioned and read from the same files).

Pure ring: no Ray import.
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedModel
from transformers.utils import GENERATION_CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, cached_file

from dpo_ray.config_check import PackingUnsupported
from dpo_ray.config_load import dtype_name

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, *, on_gpu: bool, bf16: bool = True) -> torch.dtype:
    """'auto' -> bfloat16 on GPU (when bf16 is on), float32 on CPU; else the named dtype."""
    return DTYPES[dtype_name(name, on_gpu=on_gpu, bf16=bf16)]


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
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """Causal LM in ``dtype``; dropout zeroed when asked (TRL's disable_dropout default).

    ``device_map="auto"`` spreads the layers over the visible GPUs (needs accelerate).
    ``attn_implementation``: model.attn_implementation (None: transformers' default).
    """
    model = AutoModelForCausalLM.from_pretrained(name_or_path, revision=revision, dtype=dtype, device_map=device_map,
                                                 trust_remote_code=trust_remote_code, **_attention(attn_implementation))
    return _without_dropout(model) if disable_dropout else model


def _attention(attn_implementation: str | None) -> dict[str, str]:
    """from_pretrained / from_config's attn_implementation, or nothing: transformers picks its default."""
    return {} if attn_implementation is None else {"attn_implementation": attn_implementation}


def _without_dropout(model: PreTrainedModel) -> PreTrainedModel:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def model_hidden_size(name_or_path: str, revision: str | None = None, trust_remote_code: bool = False) -> int | None:
    """The model's hidden size from its config.json alone (no weights): ZeRO-3's bucket sizes."""
    config = AutoConfig.from_pretrained(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    return config.to_dict().get("hidden_size")  # None for configs that nest it (multimodal): DeepSpeed's defaults


def load_model_partitioned(
    name_or_path: str,
    ds_config: dict[str, Any],
    *,
    revision: str | None = None,
    dtype: torch.dtype = torch.float32,
    disable_dropout: bool = True,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """The causal LM already partitioned by DeepSpeed ZeRO-3, so no rank ever holds all its weights.

    Built under ``deepspeed.zero.Init(ds_config)`` (the config deepspeed.initialize gets: same
    partitioning, dtype and offload) with weight init skipped; then every rank copies only its own
    slice of each weight out of the safetensors shards into its partition. A collective: every rank
    of the group calls it. A checkpoint without safetensors, or whose names are not the model's
    parameter names, loads through transformers' own ZeRO-3 path instead
    (:func:`load_model_partitioned_by_transformers`). Like from_pretrained: eval mode, the
    checkpoint's generation config.
    """
    import deepspeed
    from transformers.initialization import no_init_weights
    from transformers.integrations.deepspeed import prevent_arange_dtype_change

    # deepspeed.comm over the process group already up (Ray Train's): zero.Init reads its world
    # size to check the batch arithmetic before it would initialise it itself
    deepspeed.init_distributed()
    files = _safetensors_files(name_or_path, revision)
    kwargs = {"revision": revision, "dtype": dtype, "disable_dropout": disable_dropout, "trust_remote_code": trust_remote_code,
              "attn_implementation": attn_implementation}
    if not files:
        _say_fallback(name_or_path, "no safetensors shards")
        return load_model_partitioned_by_transformers(name_or_path, ds_config, **kwargs)
    config = AutoConfig.from_pretrained(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    _import_model_class(config, name_or_path, revision, trust_remote_code)
    # prevent_arange_dtype_change (entered before zero.Init): RoPE's arange stays fp32 when zero.Init casts to bf16
    with no_init_weights(), prevent_arange_dtype_change(), deepspeed.zero.Init(config_dict_or_path=ds_config):
        # code_revision: remote code at the pinned revision, the class imported above (from_config alone takes main's)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code,
                                                 **({"code_revision": revision} if trust_remote_code else {}),
                                                 **_attention(attn_implementation))
    model.tie_weights()  # tied embeddings: one parameter, read once under its first name
    mismatch = _read_partitions(model, files)
    if mismatch:
        del model  # its partitions, before the second load builds its own
        _say_fallback(name_or_path, mismatch)
        return load_model_partitioned_by_transformers(name_or_path, ds_config, **kwargs)
    if cached_file(name_or_path, GENERATION_CONFIG_NAME, revision=revision, _raise_exceptions_for_missing_entries=False):
        model.generation_config = GenerationConfig.from_pretrained(name_or_path, revision=revision)
    model.eval()
    return _without_dropout(model) if disable_dropout else model


def _import_model_class(config: Any, name_or_path: str, revision: str | None, trust_remote_code: bool) -> None:
    """Import the model's class before zero.Init is entered. A class first defined inside zero.Init
    gets DeepSpeed's __init__ wrapper at creation (Module.__init_subclass__), and on exit DeepSpeed
    puts back the __init__ it saved then, dropping whatever a decorator set afterwards: transformers
    5.25's hub-kernel decorator (kernels.use_kernelized_func) on LlamaAttention, so every later model of
    that class in the process (a plain one, a LoRA export) fails with "no attribute '_kernel_funcs'"."""
    auto_map = getattr(config, "auto_map", None) or {}
    if trust_remote_code and "AutoModelForCausalLM" in auto_map:
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        get_class_from_dynamic_module(auto_map["AutoModelForCausalLM"], name_or_path, revision=revision)
    elif type(config) in AutoModelForCausalLM._model_mapping:
        AutoModelForCausalLM._model_mapping[type(config)]  # the lazy mapping imports the modeling module


def load_model_partitioned_by_transformers(
    name_or_path: str,
    ds_config: dict[str, Any],
    *,
    revision: str | None = None,
    dtype: torch.dtype = torch.float32,
    disable_dropout: bool = True,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """ZeRO-3 loading by transformers' DeepSpeed integration: from_pretrained builds the model under
    zero.Init while an HfDeepSpeedConfig is alive, and loads layer by layer (rank 0 reads the whole
    checkpoint, each layer is gathered, written on rank 0, re-partitioned). Any weight format and
    checkpoint renames; rank 0 holds the full checkpoint in host memory while it loads. A collective.
    """
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    deepspeed.init_distributed()  # as in load_model_partitioned
    # transformers reads this object through a module-level weak reference while it is alive; unset
    # afterwards, so no later from_pretrained in this process (export, tests) is built under zero.Init.
    hf_config = HfDeepSpeedConfig(ds_config)
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, revision=revision, dtype=dtype,
                                                     trust_remote_code=trust_remote_code, **_attention(attn_implementation))
    finally:
        unset_hf_deepspeed_config()
        del hf_config
    return _without_dropout(model) if disable_dropout else model


def _safetensors_files(name_or_path: str, revision: str | None) -> list[str]:
    """Local paths of the checkpoint's safetensors shards (downloaded for a hub id); [] when it has none."""
    index = cached_file(name_or_path, SAFE_WEIGHTS_INDEX_NAME, revision=revision, _raise_exceptions_for_missing_entries=False)
    if index is not None:
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [cached_file(name_or_path, shard, revision=revision) for shard in shards]
    single = cached_file(name_or_path, SAFE_WEIGHTS_NAME, revision=revision, _raise_exceptions_for_missing_entries=False)
    return [single] if single is not None else []


def _say_fallback(name_or_path: str, why: str) -> None:
    """One line (rank 0) when ZeRO-3 loading takes transformers' slower path, which holds the whole
    checkpoint in rank 0's host memory."""
    import deepspeed.comm as dist

    if dist.get_rank() == 0:
        print(f"[dpo_ray] model.name_or_path={name_or_path}: {why}; ZeRO-3 loads it through transformers "
              "(rank 0 reads the whole checkpoint into host memory)", flush=True)


@torch.no_grad()
def _read_partitions(model: PreTrainedModel, files: list[str]) -> str | None:
    """Copy this rank's slice of every weight from the shards into its ZeRO-3 partition; persistent
    buffers (never partitioned) whole. Returns None, or, before reading anything, why it cannot: the
    shards do not hold every parameter and buffer under the model's own names and shapes.

    DeepSpeed's layout (partition_parameters.py, _partition_param): a parameter of ds_numel elements,
    flattened and zero-padded to a multiple of the group size W; rank r's ``ds_tensor`` holds
    elements [r * n, (r + 1) * n) with n = ds_tensor.numel().
    """
    import deepspeed.comm as dist
    from safetensors import safe_open

    params = dict(model.named_parameters())  # tied weights once
    saved = set(model.state_dict())
    buffers = {name: b for name, b in model.named_buffers() if name in saved}  # persistent ones only
    handles = [safe_open(path, framework="pt") for path in files]
    where = {name: f for f in handles for name in f.keys()}
    missing = sorted((params.keys() | buffers.keys()) - where.keys())
    if missing:
        return f"the checkpoint's tensor names differ from the model's (no {missing[0]})"
    shapes = {**{n: tuple(p.ds_shape) for n, p in params.items()}, **{n: tuple(b.shape) for n, b in buffers.items()}}
    for name, shape in shapes.items():
        saved_shape = tuple(where[name].get_slice(name).get_shape())
        if saved_shape != shape:
            return f"{name} is {saved_shape} in the checkpoint, {shape} in the model"
    for name, param in params.items():
        part = param.ds_tensor  # (n,) this rank's flat slice
        start = dist.get_rank(group=param.ds_process_group) * part.numel()
        count = min(param.ds_numel - start, part.numel())
        if count > 0:
            part[:count].copy_(flat_range(where[name].get_slice(name), start, count))
    for name, buf in buffers.items():
        buf.copy_(where[name].get_tensor(name))
    return None


def flat_range(tensor_slice: Any, start: int, count: int) -> torch.Tensor:
    """Elements [start, start + count) of a safetensors tensor read as flat, reading only the rows
    (first-dimension entries) that hold them."""
    shape = tensor_slice.get_shape()
    if not shape:  # a scalar
        return tensor_slice[...].reshape(-1)[start:start + count]  # [:] cannot index a 0-dim tensor
    row = math.prod(shape[1:])  # elements per row
    first, last = start // row, (start + count - 1) // row + 1
    offset = start - first * row
    return tensor_slice[first:last].reshape(-1)[offset:offset + count]


def add_lora(model: PreTrainedModel, *, r: int, alpha: int, dropout: float, target_modules: list[str]) -> Any:
    """Wrap ``model`` with PEFT LoRA adapters; only the adapters train."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                                            target_modules=list(target_modules), task_type="CAUSAL_LM"))


@torch.no_grad()
def check_packed_attention(model: Any, name_or_path: str, option: str) -> None:
    """Refuse padding-free batches for a model whose attention does not keep packed sequences apart:
    two short sequences run packed in one row (position_ids restarting at 0, no mask) must give the
    second the logits it gets alone. transformers' sdpa/eager mask (masking_utils) and flash-attention
    do this for the families that pass position_ids into their mask; a family that does not mixes
    the sequences, and its log-probs would be silently wrong. Every rank runs it (ZeRO-3 gathers)."""
    device = model.get_input_embeddings().weight.device
    first, second = torch.tensor([[3, 4, 5, 6, 7]], device=device), torch.tensor([[8, 9, 10]], device=device)
    alone = model(input_ids=second, use_cache=False).logits.float()
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2]], device=device)
    packed = model(input_ids=torch.cat([first, second], dim=1), position_ids=positions, use_cache=False).logits.float()[:, 5:]
    scale = float(alone.abs().max()) + 1.0
    tolerance = 1e-4 if alone.dtype == torch.float32 and next(model.parameters()).dtype == torch.float32 else 3e-2
    if float((packed - alone).abs().max()) > tolerance * scale:
        family = getattr(model.config, "model_type", type(model).__name__)  # PEFT or DeepSpeed wrappers keep .config
        raise PackingUnsupported(
            f"{option}=true: {name_or_path} ({family}, {model.config._attn_implementation} attention) lets packed "
            f"sequences attend to each other (its mask ignores position_ids); set {option}=false for this model")
