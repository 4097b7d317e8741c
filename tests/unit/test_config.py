from __future__ import annotations

from pathlib import Path

import pytest

from dpo_ray.config import Config, ConfigError
from dpo_ray.config_load import from_dict, load_config, resolve_paths

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "pipelines" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_yaml_loads(path: Path) -> None:
    from dpo_ray.tune.settings import load_sweep

    cfg = load_sweep(str(path), [])[0] if "tune" in path.read_text() else load_config(path)
    assert isinstance(cfg, Config)
    assert from_dict(cfg.to_dict()) == cfg  # the resolved config round-trips


def test_shipped_configs_exist() -> None:
    assert any(p.name == "quickstart.yaml" for p in CONFIGS)


def test_dotted_overrides_are_typed() -> None:
    cfg = load_config(None, ["loss.beta=0.05", "train.learning_rate=1e-5", "train.zero_stage=3",
                             "train.use_gpu=true", "model.revision=main", "train.max_steps=7"])
    assert cfg.loss.beta == 0.05
    assert cfg.train.learning_rate == 1e-5  # YAML 1.1 reads 1e-5 as a string; we accept it as float
    assert cfg.train.zero_stage == 3 and cfg.train.use_gpu is True
    assert cfg.model.revision == "main" and cfg.train.max_steps == 7


def test_int_is_accepted_for_float() -> None:
    assert load_config(None, ["loss.beta=1"]).loss.beta == 1.0


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.foo=1", "unknown config key 'train.foo'"),
        ("nonsense=1", "unknown config key 'nonsense'"),
        ("train.max_steps=abc", "train.max_steps='abc': expected int"),
        ("train.max_steps=1.5", "train.max_steps=1.5: expected int"),
        ("train.use_gpu=maybe", "train.use_gpu='maybe': expected bool"),
        ("train.zero_stage=4", "train.zero_stage=4: must be one of 'auto', 0, 1, 2, 3"),
        ("train.lr_scheduler=step", "train.lr_scheduler='step': must be one of"),
        ("loss.beta=-1", "loss.beta=-1.0: must be > 0"),
        ("loss.beta=.nan", "loss.beta=nan: must be > 0"),  # a NaN passes no range check
        ("train.learning_rate=.nan", "train.learning_rate=nan: must be > 0"),
        ("data.eval_fraction=1.5", "data.eval_fraction=1.5"),
        ("train.batch_size=30", "train.batch_size=30 is not a multiple"),
        ("loss=3", "loss: expected a mapping"),
        ("train.max_steps", "expected key=value"),
        ("model.attn_implementation=flash", "model.attn_implementation='flash': choose one of eager, sdpa"),
        ("model.attn_implementation=flash_attention_2", "flash_attention_2 runs on GPUs only; set train.use_gpu=true"),
    ],
)
def test_bad_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        load_config(None, [override])
    assert message in str(info.value)


def test_yaml_unknown_key_names_file_key(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_step: 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'train.max_step'"):
        load_config(path)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_derived_values() -> None:
    cfg = load_config(None, ["train.batch_size=32", "train.micro_batch_size=4", "train.num_workers=2",
                             "train.warmup_ratio=0.1", "train.max_steps=50"])
    assert cfg.train.gradient_accumulation_steps() == 4
    assert cfg.train.warmup_steps(50) == 5


def test_resolve_paths_makes_local_paths_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "m").mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = resolve_paths(load_config(None, ["model.name_or_path=m", "data.path=d.jsonl", "output_dir=o"]))
    assert cfg.model.name_or_path == str(tmp_path / "m")
    assert cfg.data.path == str(tmp_path / "d.jsonl")
    assert cfg.output_dir == str(tmp_path / "o")
    hub = resolve_paths(load_config(None, ["model.name_or_path=Qwen/Qwen2.5-0.5B"]))
    assert hub.model.name_or_path == "Qwen/Qwen2.5-0.5B"  # a hub id stays a hub id


@pytest.mark.parametrize("overrides, message", [
    (["model.dtype=float32"], "takes 16-bit weights, and model.dtype=float32"),
    (["train.bf16=false"], "model.dtype=auto (train.bf16=false) trains in float32"),
    (["reference.num_gpus_per_actor=1", "reference.dtype=float32"], "reference.dtype=float32 on the reference's GPUs"),
])
def test_flash_attention_needs_16_bit_weights(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["model.attn_implementation=flash_attention_2", "train.use_gpu=true", *overrides])
    assert message in str(info.value)


def test_attention_kernel_of_the_reference() -> None:
    gpu = ["model.attn_implementation=flash_attention_2", "train.use_gpu=true"]
    assert load_config(None, gpu).reference_attention() is None  # scored on CPU: transformers' default
    assert load_config(None, [*gpu, "reference.num_gpus_per_actor=1"]).reference_attention() == "flash_attention_2"
    assert load_config(None, ["model.attn_implementation=eager"]).reference_attention() == "eager"
    assert load_config(None, []).reference_attention() is None
