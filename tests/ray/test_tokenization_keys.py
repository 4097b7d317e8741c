"""The tokenization version and mode are in both cache keys (the key functions live in the Ray stage module)."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_tokenization_version_and_mode_are_in_both_cache_keys(tiny_model_dir: str, pairs_jsonl: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import dpo_ray.data.stage
    import dpo_ray.reference.stage
    from dpo_ray.config_load import load_config
    from dpo_ray.data.stage import tokenized_key
    from dpo_ray.reference.stage import reference_key
    from dpo_ray.store import DataId

    def keys(*extra: str) -> tuple[str, str]:
        cfg = load_config(None, [f"model.name_or_path={tiny_model_dir}", f"data.path={pairs_jsonl}", *extra])
        return tokenized_key(cfg)[0], reference_key(cfg, DataId(rows=10, hash_sum=12345))[0]

    base = keys()
    assert keys() == base
    jointly = keys("data.tokenize_jointly=true")
    for stage in (dpo_ray.data.stage, dpo_ray.reference.stage):  # each key reads the version where it is built
        monkeypatch.setattr(stage, "TOKENIZE_VERSION", stage.TOKENIZE_VERSION + 1)
    bumped = keys()
    # Same ids (the same DataId) under a new tokenization version still miss: old entries are not served.
    assert all(a != b for a, b in zip(base, jointly)) and all(a != b for a, b in zip(base, bumped))
