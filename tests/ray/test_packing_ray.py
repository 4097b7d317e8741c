"""Integration tier (issue 20): token-budget micro-batches and padding-free packing through the whole
pipeline on a local Ray: the same trajectory as fixed micro-batches for 1 and 2 workers and across a
killed worker's resume, packed with the chunked LM head; step 0 in packed mode (reference scored
packed); packed with ZeRO-3, LoRA, WPO and LD-DPO."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import ray

from conftest import small_overrides
from dpo_ray.config_load import load_config
from dpo_ray.faults import FAULTS_ENV
from dpo_ray.run import run

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module", autouse=True)
def ray_local():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _losses(out: Path) -> dict[float, float]:
    rows = [json.loads(line) for line in (out / "metrics_history.jsonl").read_text().splitlines()]
    return {row["step"]: row["train/loss"] for row in rows if "train/loss" in row}


def _run(tiny_model_dir: str, pairs_jsonl: str, out: Path, caches: Path, **extra: object) -> dict:
    return run(load_config(None, small_overrides(tiny_model_dir, pairs_jsonl, str(out), caches=caches, **{
        "train.max_steps": 6, "train.checkpoint_every": 2, "train.lr_scheduler": "constant", "train.eval_every": 3,
        **extra})))


@pytest.mark.slow  # four runs
def test_token_budget_and_packing_follow_the_fixed_trajectory(tiny_model_dir: str, pairs_jsonl: str, tmp_path: Path,
                                                              shared_caches: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    budget = {"train.micro_batch_tokens": 160}  # a few pairs of ~20-48 tokens a row: 2-4 micro-batches a step
    fixed = _run(tiny_model_dir, pairs_jsonl, tmp_path / "fixed", shared_caches)
    one = _run(tiny_model_dir, pairs_jsonl, tmp_path / "one", shared_caches, **budget, **{"train.num_workers": 1})
    # Packed, with the reference scored packed too (its own cache): step 0 is ln 2 only if the cached
    # reference log-probs equal the packed policy's.
    packed = {**budget, "train.padding_free": True, "reference.padding_free": True, "reference.batch_tokens": 300,
              "reference.cache_dir": str(tmp_path / "packed-refcache"), "train.logps_chunk_size": 16}
    two = _run(tiny_model_dir, pairs_jsonl, tmp_path / "two", shared_caches, **packed)
    # A worker dies at step 3, after the step-2 checkpoint; the restarted group resumes mid-epoch.
    monkeypatch.setenv(FAULTS_ENV, json.dumps({"train_crash_at_step": 3, "train_marker": str(tmp_path / "crashed")}))
    resumed = _run(tiny_model_dir, pairs_jsonl, tmp_path / "resumed", shared_caches, **packed, **{"train.max_failures": 1})
    assert (tmp_path / "crashed").exists() and resumed["train/steps"] == 6

    assert two["initial_eval/loss"] == pytest.approx(math.log(2), abs=1e-5)
    curves = {name: _losses(tmp_path / name) for name in ("fixed", "one", "two", "resumed")}
    assert len(curves["fixed"]) == 6 and all(curve.keys() == curves["fixed"].keys() for curve in curves.values())
    for name in ("one", "two", "resumed"):
        for step, loss in curves["fixed"].items():
            assert curves[name][step] == pytest.approx(loss, abs=1e-4), (name, step)
    assert fixed["eval/loss"] == pytest.approx(two["eval/loss"], abs=1e-4)
    assert fixed["train/loss"] != pytest.approx(fixed["initial_eval/loss"], abs=1e-3)  # it trained
    # The budget cut the steps differently from fixed micro-batches of 4 pairs, and packing left no pads.
    assert fixed["perf/micro_batches_per_step"] == 2.0 and one["perf/micro_batches_per_step"] != 4.0
    assert one["perf/micro_batch_tokens_max"] <= 160 < fixed["perf/micro_batch_tokens_max"]
    assert two["perf/pad_fraction"] == 0.0 < one["perf/pad_fraction"]
    assert two["ref/pad_fraction"] == 0.0 < fixed["ref/pad_fraction"]  # the reference pool scored packed
    assert two["perf/batching"].startswith("packed") and fixed["perf/batching"].startswith("padded")


@pytest.mark.slow  # two runs
def test_packed_zero3_lora_wpo_ld_matches_padded(tiny_model_dir: str, pairs_jsonl: str, tmp_path: Path,
                                                          shared_caches: Path) -> None:
    extra = {"train.zero_stage": 3, "model.lora.r": 4, "loss.wpo": True,
             "loss.ld_alpha": 0.5, "train.learning_rate": 5e-3, "train.checkpoint_every": "null"}
    padded = _run(tiny_model_dir, pairs_jsonl, tmp_path / "padded", shared_caches, **extra)
    # packed through another attention kernel (model.attn_implementation): eager's mask keeps packed sequences apart too
    packed = _run(tiny_model_dir, pairs_jsonl, tmp_path / "packed", shared_caches, **extra,
                  **{"train.padding_free": True, "model.attn_implementation": "eager"})
    a, b = _losses(tmp_path / "padded"), _losses(tmp_path / "packed")
    assert a.keys() == b.keys() and all(b[step] == pytest.approx(loss, abs=1e-4) for step, loss in a.items())
    assert packed["perf/pad_fraction"] == 0.0 and (tmp_path / "packed" / "model").is_dir()
    assert packed["perf/batching"].endswith(", eager attention") and padded["perf/batching"].endswith(", sdpa attention")
    assert padded["train/loss"] != pytest.approx(padded["initial_eval/loss"], abs=1e-3)


@pytest.mark.parametrize("stage", ["train", "reference"])
def test_a_model_whose_attention_mixes_packed_sequences_is_refused(stage: str, tiny_model_dir: str, pairs_jsonl: str,
                                                                  tmp_path: Path, shared_caches: Path) -> None:
    """OPT's mask is built from positions it counts itself, so packed sequences would see each other:
    padding_free stops with one line naming the model and the setting, and no model is written."""
    import shutil

    import transformers

    from dpo_ray.config import ConfigError

    opt = tmp_path / "tiny-opt"
    config = transformers.OPTConfig(vocab_size=320, hidden_size=16, ffn_dim=32, num_hidden_layers=1, num_attention_heads=2,
                                    word_embed_proj_dim=16, max_position_embeddings=128, pad_token_id=0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(opt)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (Path(tiny_model_dir) / name).exists():
            shutil.copy(Path(tiny_model_dir) / name, opt / name)
    option = f"{stage}.padding_free"
    with pytest.raises(ConfigError, match=rf"^{option}=true: .*tiny-opt \(opt, sdpa attention\) lets packed sequences") as err:
        _run(str(opt), pairs_jsonl, tmp_path / "run", tmp_path / "caches", **{option: True, "train.max_steps": 1})
    assert "\n" not in str(err.value) and not (tmp_path / "run" / "model").exists()
