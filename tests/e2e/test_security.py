"""Security where a run touches files: secrets given in the environment are written nowhere (outputs,
caches, checkpoints, stdout/stderr, Ray's session logs); model.trust_remote_code is off unless set;
exports are safetensors and nothing in a run's outputs is a pickle except DeepSpeed's own checkpoint
shards; the code unpickles nothing itself.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO, small_overrides
from dpo_ray.config import ModelConfig
from dpo_ray.config_load import load_config

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # every test reads one full run of pipelines/dpo.py
FAKE_SECRETS = {
    "HF_TOKEN": "hf_FAKE_dpo_ray_secret_123",
    "HUGGING_FACE_HUB_TOKEN": "hf_FAKE_dpo_ray_secret_hub_789",
    "WANDB_API_KEY": "FAKE_wandb_dpo_ray_secret_456",
    "MLFLOW_TRACKING_TOKEN": "FAKE_mlflow_dpo_ray_secret_012",
}
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
PICKLE_SUFFIXES = (".pkl", ".pickle")


@pytest.fixture(scope="module")
def secret_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: str, pairs_jsonl: str) -> Iterator[dict[str, Any]]:
    """One short run (with a mid-run checkpoint) given fake secrets, its own Ray temp dir (RAY_TMPDIR)."""
    root = tmp_path_factory.mktemp("secret-run")
    out = root / "run"  # small_overrides puts the reference and tokenized caches beside it, under root
    ray_tmp = tempfile.mkdtemp(prefix="dps-", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(FAKE_SECRETS, PYTHONUNBUFFERED="1", RAY_TMPDIR=ray_tmp)
    try:
        proc = subprocess.run(
            [sys.executable, "pipelines/dpo.py", *small_overrides(tiny_model_dir, pairs_jsonl, str(out), **{"train.checkpoint_every": 2})],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        yield {"root": root, "out": out, "ray_logs": Path(ray_tmp), "proc": proc}
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_fake_secrets_appear_in_no_output_cache_checkpoint_or_log(secret_run: dict[str, Any]) -> None:
    out, proc = secret_run["out"], secret_run["proc"]
    written = _files(secret_run["root"])
    ray_logs = [p for p in _files(secret_run["ray_logs"]) if "/logs/" in str(p)]
    names = {str(p.relative_to(out)) for p in written if p.is_relative_to(out)}
    # The grep below covers every kind of file a run writes.
    assert {"config.yaml", "metrics.json", "metrics_history.jsonl", "data_report.json", "curves.png", "model/model.safetensors"} <= names
    assert any(n.startswith("tensorboard/") for n in names)
    assert any(re.match(r"ray/[^/]+/checkpoint_[^/]+/deepspeed/", n) for n in names)
    assert any(p.suffix == ".parquet" for p in written)  # the caches
    assert ray_logs, "no Ray session logs found"
    for secret in FAKE_SECRETS.values():
        assert secret not in proc.stdout and secret not in proc.stderr
        for path in written + ray_logs:
            assert secret.encode() not in path.read_bytes(), f"{secret} found in {path}"


def test_trust_remote_code_is_off_unless_set(secret_run: dict[str, Any]) -> None:
    assert ModelConfig().trust_remote_code is False
    assert load_config(None).model.trust_remote_code is False
    assert load_config(None, ["model.trust_remote_code=true"]).model.trust_remote_code is True
    for path in [*(REPO / "pipelines" / "configs").glob("*.yaml"), REPO / "cluster" / "dpo_cluster.yaml"]:
        assert (yaml.safe_load(path.read_text()).get("model") or {}).get("trust_remote_code", False) is False, path
    assert yaml.safe_load((secret_run["out"] / "config.yaml").read_text())["model"]["trust_remote_code"] is False


def test_export_is_safetensors_and_only_deepspeed_shards_are_torch_files(secret_run: dict[str, Any]) -> None:
    out = secret_run["out"]
    model_files = {p.name for p in (out / "model").iterdir()}
    assert "model.safetensors" in model_files
    assert not [n for n in model_files if n.endswith(TORCH_SUFFIXES + PICKLE_SUFFIXES)], model_files
    written = _files(secret_run["root"])
    assert not [p for p in written if p.suffix in PICKLE_SUFFIXES]
    # torch.save files (pickle-based) exist only inside Ray Train checkpoints: DeepSpeed's model /
    # optimizer shards and each rank's RNG state. Exports and caches are safetensors, Parquet, JSON, YAML.
    torch_files = [p.relative_to(out) for p in written if p.suffix in TORCH_SUFFIXES]
    assert torch_files
    assert all(re.match(r"ray/[^/]+/checkpoint_[^/]+/", str(p)) for p in torch_files), torch_files
    caches = [p for p in written if not p.is_relative_to(out)]
    assert caches and {p.suffix for p in caches} <= {".parquet", ".json"}, {p.suffix for p in caches}
