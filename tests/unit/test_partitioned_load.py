"""ZeRO-3 models load partitioned (issue 18): two gloo ranks on CPU, no Ray.

Each rank loads the tiny Llama through dpo_ray.modeling.load_model_partitioned and, before
deepspeed.initialize, every parameter is already a DeepSpeed partition: no local full tensor, and
the rank's elements are its ceil(numel / 2) share. Gathered, the weights are the safetensors file's.
The same for transformers' own ZeRO-3 path (the fallback), which leaves no HfDeepSpeedConfig behind.
Then the engines train: the full model's logits equal a plainly loaded model's, and LoRA on the
partitioned model gathers (at export) to the keys a whole LoRA model loads strictly.
"""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _partition_report(model: Any, file_weights: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Per-parameter local sizes right after loading, then the gathered weights against the file's."""
    import deepspeed

    params = dict(model.named_parameters())
    local = {name: {"data": p.data.numel(), "partition": p.ds_tensor.numel(), "numel": p.ds_numel,
                    "full": math.prod(p.ds_shape)} for name, p in params.items()}
    with deepspeed.zero.GatheredParameters(list(params.values())):
        mismatched = [name for name, p in params.items() if not torch.equal(p.data, file_weights[name].to(p.dtype))]
    return {"local": local, "mismatched": mismatched, "names": sorted(params)}


def _worker(rank: int, port: int, model_dir: str, out_dir: str) -> None:
    os.environ.update(DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    import deepspeed
    import deepspeed.ops
    from safetensors.torch import load_file
    from transformers.integrations import is_deepspeed_zero3_enabled

    from dpo_ray import modeling
    from dpo_ray.config_load import load_config
    from dpo_ray.modeling import (add_lora, load_model, load_model_partitioned, load_model_partitioned_by_transformers,
                                  model_hidden_size)
    from dpo_ray.train.ds_config import build_ds_config

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # gloo reduces; no JIT build
    cfg = load_config(None, [f"model.name_or_path={model_dir}", "train.zero_stage=3", f"train.num_workers={WORLD}",
                             "train.batch_size=4", "train.micro_batch_size=2"])
    ds_config = build_ds_config(cfg.train, model_hidden_size(model_dir))
    file_weights = load_file(str(Path(model_dir) / "model.safetensors"))
    report: dict[str, Any] = {}

    def no_fallback(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the safetensors checkpoint fell back to transformers' loading")

    modeling.load_model_partitioned_by_transformers = no_fallback  # the direct reading is what is tested
    model = load_model_partitioned(model_dir, ds_config)
    modeling.load_model_partitioned_by_transformers = load_model_partitioned_by_transformers
    report["direct"] = _partition_report(model, file_weights)
    report["direct_eval_mode"] = not model.training
    by_hf = load_model_partitioned_by_transformers(model_dir, ds_config, attn_implementation="eager")
    report["transformers"] = _partition_report(by_hf, file_weights)
    report["zero3_flag_after"] = is_deepspeed_zero3_enabled()
    plain = load_model(model_dir)  # a later plain load in the same process: whole tensors again
    report["plain_is_whole"] = all(p.data.numel() == p.numel() > 0 for p in plain.parameters())

    # The full model trains as a ZeRO-3 engine and computes what the plain model computes.
    model.gradient_checkpointing_enable()
    model.train()
    ids = torch.tensor([[1, 20, 21, 22, 23, 24], [1, 30, 31, 32, 33, 34]])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    logits = engine(input_ids=ids).logits
    report["logits_max_diff"] = float((logits - plain(input_ids=ids).logits).abs().max())
    engine.backward(logits.float().logsumexp(-1).mean())
    engine.step()

    # LoRA on a partitioned base (gradient checkpointing on), one step, and the export's gather.
    lora_base = load_model_partitioned(model_dir, ds_config, attn_implementation="eager")  # model.attn_implementation
    report["attention"] = [m.config._attn_implementation for m in (model, by_hf, lora_base)]
    lora_base.gradient_checkpointing_enable()
    lora = add_lora(lora_base, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-3)
    lora_engine, *_ = deepspeed.initialize(model=lora, optimizer=optimizer, config=ds_config)
    lora_engine.backward(lora_engine(input_ids=ids).logits.float().logsumexp(-1).mean())
    lora_engine.step()
    gathered = lora_engine._zero3_consolidated_16bit_state_dict()  # collective; the dict on rank 0
    if rank == 0:
        whole = add_lora(load_model(model_dir), r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
        whole.load_state_dict(gathered, strict=True)  # what loop._whole_lora_model does at export
        report["lora_keys_load_strictly"] = True
        frozen = [k for k in file_weights if f"base_model.model.{k}" in gathered]  # the layers LoRA left alone
        report["lora_base_unchanged"] = len(frozen) > 0 and all(torch.equal(gathered[f"base_model.model.{k}"], file_weights[k])
                                                                for k in frozen)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def reports(tiny_model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("partitioned")
    mp.start_processes(_worker, args=(_free_port(), tiny_model_dir, str(out)), nprocs=WORLD, start_method="spawn")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


@pytest.mark.parametrize("path", ["direct", "transformers"])
def test_no_rank_holds_the_full_model_and_the_weights_are_the_files(reports: list[dict[str, Any]], path: str) -> None:
    total = sum(p["full"] for p in reports[0][path]["local"].values())
    largest = max(p["full"] for p in reports[0][path]["local"].values())
    for rank, report in enumerate(reports):
        local = report[path]["local"]
        assert all(p["data"] == 0 for p in local.values()), f"rank {rank}: a parameter holds its full tensor"
        assert all(p["numel"] == p["full"] and p["partition"] == -(-p["full"] // WORLD) for p in local.values())
        held = sum(p["partition"] for p in local.values())
        assert held <= total / WORLD + len(local) and held < total - largest  # about half, far below the whole
        assert report[path]["mismatched"] == [], f"rank {rank}: gathered weights differ from model.safetensors"
    assert reports[0][path]["names"] == reports[1][path]["names"]


def test_no_global_left_and_engines_train(reports: list[dict[str, Any]]) -> None:
    for report in reports:
        assert report["zero3_flag_after"] is False  # transformers' HfDeepSpeedConfig was unset
        assert report["plain_is_whole"] and report["direct_eval_mode"]
        assert report["logits_max_diff"] < 1e-5  # RoPE, tied embeddings and every weight as from_pretrained has them
    assert reports[0]["lora_keys_load_strictly"] and reports[0]["lora_base_unchanged"]
    assert reports[0]["attention"] == ["sdpa", "eager", "eager"]  # transformers' default, then the chosen kernel


def test_flat_range_reads_any_slice_of_a_saved_tensor(tmp_path: Path) -> None:
    """The partition reader's slicing where a rank's range starts mid-row, ends at a ragged last rank
    or covers a 1-D or scalar tensor (the 2-rank model above splits on row boundaries only)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from dpo_ray.modeling import flat_range

    tensors = {"m": torch.arange(35.0).reshape(7, 5), "v": torch.arange(5.0), "s": torch.tensor(3.0)}
    save_file(tensors, str(tmp_path / "t.safetensors"))
    with safe_open(str(tmp_path / "t.safetensors"), framework="pt") as f:
        for name, t in tensors.items():
            flat = t.reshape(-1)
            for start in range(flat.numel()):
                for count in range(1, flat.numel() - start + 1):
                    assert torch.equal(flat_range(f.get_slice(name), start, count), flat[start:start + count]), (name, start, count)
