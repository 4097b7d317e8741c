"""Shared fixtures: a tiny model saved to disk (loaded via from_pretrained, as a hub id is) and data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dpo_ray.toy import build_tiny_model, make_preference_rows

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def pair_rows() -> list[dict[str, str]]:
    return make_preference_rows(400, seed=1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, pair_rows: list[dict[str, str]]) -> str:
    out = tmp_path_factory.mktemp("tiny-model")
    build_tiny_model(out, pair_rows, hidden_size=32, num_layers=2, num_heads=2, vocab_size=320, seed=3)
    return str(out)


@pytest.fixture(scope="session")
def pairs_jsonl(tmp_path_factory: pytest.TempPathFactory, pair_rows: list[dict[str, str]]) -> str:
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in pair_rows))
    return str(path)


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir: str):
    from dpo_ray.modeling import load_tokenizer

    return load_tokenizer(tiny_model_dir)


def small_overrides(model_dir: str, data_path: str, output_dir: str, **extra: object) -> list[str]:
    """Dotted overrides for a short CPU run of the pipeline."""
    base = {
        "model.name_or_path": model_dir, "data.path": data_path, "data.max_length": 48,
        "data.eval_fraction": 0.15, "reference.batch_size": 32, "train.learning_rate": 1e-3,
        "train.max_steps": 4, "train.batch_size": 16, "train.micro_batch_size": 4,
        "train.num_workers": 2, "train.eval_every": 2, "train.logging_steps": 1,
        "output_dir": output_dir, "reference.cache_dir": f"{output_dir}-refcache",
        "data.cache_dir": f"{output_dir}-datacache",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]
