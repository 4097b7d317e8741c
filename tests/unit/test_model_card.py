"""model/README.md: the Hugging Face model card every exported model carries (issue 21)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from dpo_ray.config_load import from_dict
from dpo_ray.model_card import PAPERS, model_card
from dpo_ray.config import LOSS_TYPES

SECRETS = {"HF_TOKEN": "hf_FAKEtoken1234567890", "WANDB_API_KEY": "fakewandbkey0123456789abcdef",
           "AWS_SECRET_ACCESS_KEY": "fakeAWSsecretKEY/0123456789", "MLFLOW_TRACKING_PASSWORD": "fake-mlflow-pw"}
SUMMARY = {"train/steps": 40.0, "train/pairs_seen": 1280.0, "stop_reason": "max_steps", "perf/num_workers": 2.0,
           "eval/loss": 0.41, "eval/rewards/accuracies": 0.875, "eval/rewards/margins": 1.5, "eval/num_pairs": 64.0,
           "eval/chat/loss": 0.39, "eval/chat/rewards/accuracies": 0.9, "eval/chat/rewards/margins": 1.6, "eval/chat/num_pairs": 40.0,
           "eval/local/loss": 0.44, "eval/local/rewards/accuracies": 0.833, "eval/local/rewards/margins": 1.3,
           "eval/local/num_pairs": 24.0}


def _front_matter(card: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", card, re.S)
    assert match, card[:200]
    return yaml.safe_load(match.group(1))


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))  # no cached card of a hub model


def test_card_of_a_local_model_on_two_sources(tmp_path: Path, secrets: None) -> None:
    model = tmp_path / "home" / "me" / "my-base-model"
    model.mkdir(parents=True)
    (model / "README.md").write_text("---\nlicense: apache-2.0\nlanguage: en\n---\n# base\n")
    data = tmp_path / "home" / "me" / "pairs.jsonl"
    cfg = from_dict({"model": {"name_or_path": str(model)}, "output_dir": str(tmp_path / "home" / "me" / "run"),
                     "loss": {"type": ["sigmoid", "sft"], "weights": [1.0, 0.5], "beta": 0.05},
                     "train": {"learning_rate": 2e-6, "batch_size": 32},
                     "data": {"sources": [{"name": "chat", "path": "org/chat-prefs", "weight": 3.0},
                                          {"name": "local", "path": str(data), "weight": 1.0}]}})
    card = model_card(cfg, SUMMARY)
    meta = _front_matter(card)
    assert meta == {"library_name": "transformers", "tags": ["dpo", "dpo_ray", "sigmoid", "sft"], "license": "apache-2.0",
                    "datasets": ["org/chat-prefs"]}  # no base_model: a local folder is no hub id
    assert "`sigmoid` x 1 (DPO, Rafailov et al. 2023" in card and "`sft` x 0.5" in card and "beta 0.05" in card
    assert "learning rate 2e-06" in card and "40 steps, 1280 pairs seen" in card
    assert "`chat`: org/chat-prefs, weight 3" in card and "`local`: a local file (pairs.jsonl), weight 1" in card
    assert "| all | 0.41 | 0.875 | 1.5 | 64 |" in card and "| chat | 0.39 | 0.9 | 1.6 | 40 |" in card
    assert "| local | 0.44 | 0.833 | 1.3 | 24 |" in card
    assert "python pipelines/dpo.py --config config.yaml" in card
    assert str(tmp_path) not in card and str(Path.home()) not in card  # no local absolute path
    assert not [name for name, value in SECRETS.items() if value in card]


def test_card_of_a_hub_model_lora_adapter(tmp_path: Path, secrets: None) -> None:
    cfg = from_dict({"model": {"name_or_path": "org/base-7b", "lora": {"r": 8, "export": "adapter"}},
                     "data": {"path": "org/prefs"}, "loss": {"type": ["ipo"]}, "output_dir": str(tmp_path / "run")})
    card = model_card(cfg, {**SUMMARY, "eval/chat/loss": None})
    meta = _front_matter(card)
    assert meta == {"base_model": "org/base-7b", "library_name": "peft", "tags": ["dpo", "dpo_ray", "ipo"],
                    "datasets": ["org/prefs"]}  # the license of a model whose card is not on disk is not known
    assert "a LoRA adapter of `org/base-7b`" in card and "LoRA r 8" in card and "IPO, arXiv:2310.12036" in card
    assert "| chat |" not in card  # no data.sources: one row, all pairs
    assert not [name for name, value in SECRETS.items() if value in card]


def test_every_loss_names_its_paper() -> None:
    assert set(PAPERS) == set(LOSS_TYPES)
