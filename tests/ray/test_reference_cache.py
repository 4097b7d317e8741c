"""The reference stage: content-keyed cache, committed atomically, hit without a model, fault tolerant."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import ray
from safetensors.torch import load_file, save_file

from conftest import small_overrides
from dpo_ray.config_load import load_config
from dpo_ray.faults import FAULTS_ENV
from dpo_ray.data.stage import prepare_pairs
from dpo_ray.reference.stage import reference_key, reference_stage, score_reference
from dpo_ray.store import CacheStore, DataId

pytestmark = pytest.mark.ray
REF = ["ref_chosen_logps", "ref_rejected_logps", "ref_chosen_prefix_logps", "ref_rejected_prefix_logps"]


@pytest.fixture(scope="module", autouse=True)
def ray_local():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _prepare(cfg, out: Path):
    kept, _, data_id = prepare_pairs(cfg, out)
    return kept, data_id


def _hashes(pairs) -> list[str]:
    return list(pairs.select_columns(["row_hash"]).to_pandas()["row_hash"])


def _by_row(ds) -> dict[str, np.ndarray]:
    df = ds.to_pandas()
    return {rid: np.array([df.loc[i, c] for c in REF]) for i, rid in enumerate(df["row_id"])}


def test_cache_miss_then_hit_without_scoring(tiny_model_dir, pairs_jsonl, tmp_path, monkeypatch) -> None:
    import dpo_ray.reference.stage

    cfg = load_config(None, small_overrides(tiny_model_dir, pairs_jsonl, str(tmp_path / "run")))
    pairs, data_id = _prepare(cfg, tmp_path / "run")
    scored, stats = reference_stage(cfg, pairs, data_id)
    assert not stats.cache_hit and 0.0 <= stats.pad_fraction < 0.5
    manifest = CacheStore(cfg.reference.cache_dir).read_manifest(stats.key)
    assert manifest["rows"] == data_id.rows == scored.count()
    assert set(manifest["versions"]) == {"torch", "transformers"}
    df = scored.to_pandas()
    pads, real = int(df["ref_pad_tokens"].sum()), int(df["ref_tokens"].sum())
    assert pads > 0 and stats.pad_fraction == manifest["pad_fraction"] == pads / (pads + real)
    first = _by_row(scored)
    assert len(first) == data_id.rows  # exactly one entry per row

    def no_scoring(*args, **kwargs):
        raise AssertionError("a warm cache must not score (or load the reference model)")

    monkeypatch.setattr(dpo_ray.reference.stage, "score_reference", no_scoring)
    again, hit = reference_stage(cfg, pairs, data_id)
    assert hit.cache_hit and hit.key == stats.key
    second = _by_row(again)
    assert second.keys() == first.keys()
    assert all(np.array_equal(first[k], second[k]) for k in first)


def test_partial_cache_is_never_used(tiny_model_dir, pairs_jsonl, tmp_path, capsys) -> None:
    cfg = load_config(None, small_overrides(tiny_model_dir, pairs_jsonl, str(tmp_path / "run")))
    pairs, data_id = _prepare(cfg, tmp_path / "run")
    key, _ = reference_key(cfg, data_id)
    store = CacheStore(cfg.reference.cache_dir)
    # A data folder with no manifest (a writer that died) and then a manifest whose count is off.
    pairs.limit(5).write_parquet(store.new_data_uri(key))
    _, stats = reference_stage(cfg, pairs, data_id)
    assert not stats.cache_hit
    store.commit(key, {"rows": data_id.rows + 1, "data_uri": store.new_data_uri(key), "pad_fraction": 0.0})
    _, stats = reference_stage(cfg, pairs, data_id)
    assert not stats.cache_hit
    _, stats = reference_stage(cfg, pairs, data_id)  # the rescored entry was committed over the bad one
    assert stats.cache_hit

    # A part overwritten after the commit and its record rewritten to match, as a store that checks
    # sizes only (s3/gs) would not notice: the read fails, one warning, scored and committed afresh.
    manifest = store.read_manifest(key)
    Path(store.data_files(key, manifest)[0]).write_bytes(b"not parquet" * 100)
    store.commit(key, {**manifest, "files": store.file_records(store.data_uri(key, manifest))})
    capsys.readouterr()
    _, again = reference_stage(cfg, pairs, data_id)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("cache:")]
    assert not again.cache_hit and len(warnings) == 1
    assert warnings[0].startswith(f"cache: entry {key} at {store.entry_uri(key)} is damaged (it does not read: ")
    assert warnings[0].endswith("); recomputing")
    _, third = reference_stage(cfg, pairs, data_id)
    assert third.cache_hit


def test_key_changes_with_each_input(tiny_model_dir, pairs_jsonl, tmp_path) -> None:
    base = small_overrides(tiny_model_dir, pairs_jsonl, str(tmp_path / "run"))
    cfg = load_config(None, base)
    pairs, data_id = _prepare(cfg, tmp_path / "run")
    row_hashes = _hashes(pairs)
    # The sum Ray tasks computed block by block is the one over the kept rows, in any order.
    assert data_id == DataId.of(row_hashes) == DataId.of(row_hashes[::2] + row_hashes[1::2])
    key, _ = reference_key(cfg, data_id)
    assert reference_key(load_config(None, [*base, "loss.beta=0.5", "train.learning_rate=1e-4"]), data_id)[0] == key

    weights = tmp_path / "weights"
    shutil.copytree(tiny_model_dir, weights)
    tensors = load_file(weights / "model.safetensors")
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1e-3
    save_file(tensors, weights / "model.safetensors", metadata={"format": "pt"})
    tokenizer = tmp_path / "tokenizer"
    shutil.copytree(tiny_model_dir, tokenizer)
    conf = json.loads((tokenizer / "tokenizer_config.json").read_text())
    (tokenizer / "tokenizer_config.json").write_text(json.dumps({**conf, "model_max_length": 77}))
    shorter = load_config(None, [*base, "data.max_length=24"])
    _, shorter_id = _prepare(shorter, tmp_path / "run2")

    misses = {
        "weights": reference_key(load_config(None, [*base, f"model.name_or_path={weights}"]), data_id)[0],
        "tokenizer": reference_key(load_config(None, [*base, f"model.name_or_path={tokenizer}"]), data_id)[0],
        "data": reference_key(cfg, DataId.of(row_hashes[1:]))[0],
        "max_length": reference_key(shorter, shorter_id)[0],
        "dtype": reference_key(load_config(None, [*base, "reference.dtype=bfloat16"]), data_id)[0],
        "attention": reference_key(load_config(None, [*base, "model.attn_implementation=eager"]), data_id)[0],
    }
    # sdpa named is a key of its own (an explicit choice); the default (null) keeps the key caches already have
    assert "attention" not in reference_key(cfg, data_id)[1]
    assert shorter_id != data_id and shorter_id.rows == data_id.rows  # truncation changed the token ids themselves
    assert all(k != key for k in misses.values()), misses
    assert len(set(misses.values())) == len(misses)


def test_scoring_survives_a_killed_actor(tiny_model_dir, pairs_jsonl, tmp_path, monkeypatch) -> None:
    cfg = load_config(None, small_overrides(tiny_model_dir, pairs_jsonl, str(tmp_path / "run")))
    pairs, data_id = _prepare(cfg, tmp_path / "run")
    clean = _by_row(score_reference(cfg, pairs).materialize())
    marker = tmp_path / "crashed"
    monkeypatch.setenv(FAULTS_ENV, json.dumps({"reference_crash_at_call": 2, "reference_marker": str(marker)}))
    faulty = score_reference(cfg, pairs).materialize()
    assert marker.exists()  # an actor really died mid-stage
    got = _by_row(faulty)
    assert faulty.count() == len(got) == data_id.rows  # complete, exactly one entry per row
    assert all(np.allclose(got[k], clean[k], atol=1e-9) for k in clean)


def test_tokenized_cache_hit_and_every_input_changes_the_key(tiny_model_dir, pairs_jsonl, tmp_path, monkeypatch) -> None:
    import dpo_ray.data.stage
    from dpo_ray.data.stage import tokenized_key

    data = tmp_path / "pairs.jsonl"
    shutil.copy(pairs_jsonl, data)
    cfg = load_config(None, small_overrides(tiny_model_dir, str(data), str(tmp_path / "run")))
    _, counts, data_id = prepare_pairs(cfg, tmp_path / "run")
    assert not counts.tokenize_cache_hit

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("a warm tokenized cache must not tokenize")

    def no_checking(*args, **kwargs):
        raise AssertionError("the entry keeps its rows' check (issue 19): a hit must not count them again")

    report = (tmp_path / "run" / "data_report.json").read_text()
    (tmp_path / "run" / "data_report.json").unlink()
    with monkeypatch.context() as m:
        m.setattr(dpo_ray.data.stage, "tokenize", no_tokenizing)
        m.setattr(dpo_ray.data.stage, "check_rows", no_checking)
        _, again, data_id_again = prepare_pairs(cfg, tmp_path / "run")
    assert again.tokenize_cache_hit and data_id_again == data_id
    assert again.counts == counts.counts
    assert (tmp_path / "run" / "data_report.json").read_text() == report  # written again, from the kept check
    checks, check_rows = [], dpo_ray.data.stage.check_rows
    with monkeypatch.context() as m:  # data.dedup is not in the key: the other setting counts the rows again
        m.setattr(dpo_ray.data.stage, "check_rows", lambda rows, dedup: checks.append(dedup) or check_rows(rows, dedup))
        m.setattr(dpo_ray.data.stage, "tokenize", no_tokenizing)
        prepare_pairs(load_config(None, small_overrides(tiny_model_dir, str(data), str(tmp_path / "run"),
                                                        **{"data.dedup": "false"})), tmp_path / "run")
    assert checks == [False]

    key = tokenized_key(cfg)[0]
    for override in ("data.max_length=40", "data.truncation_mode=keep_start", "data.eval_fraction=0.2", "data.format=standard"):
        changed = load_config(None, small_overrides(tiny_model_dir, str(data), str(tmp_path / "run"), **dict([override.split("=")])))
        assert tokenized_key(changed)[0] != key, override
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    tok_cfg = json.loads((model / "tokenizer_config.json").read_text())
    tok_cfg["chat_template"] = "{{ messages[0]['content'] }}"
    (model / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    assert tokenized_key(load_config(None, small_overrides(str(model), str(data), str(tmp_path / "run"))))[0] != key
    with data.open("a") as f:
        f.write(json.dumps({"prompt": "p?", "chosen": "yes", "rejected": "no"}) + "\n")
    assert tokenized_key(cfg)[0] != key
