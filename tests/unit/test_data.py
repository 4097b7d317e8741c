"""Data stage, pure ring: sources, formats, validation drops, tokenization, truncation, split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from dpo_ray.data.parse import (
    ROW_FIELDS, DataError, expand_paths, is_eval_prompt, is_saved_dataset, load_hf_table, normalize_table, parse_file, row_id,
)
from dpo_ray.data.tokenize import TokenizeRows, tokenize_pair, tokenizer_adds_bos
from dpo_ray.toy import make_preference_rows

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
COLUMNS = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}
ORIGINAL = make_preference_rows(40, seed=11)  # what make_fixtures.py wrote


def parse(name: str, fmt: str = "auto", columns: dict[str, str] = COLUMNS) -> list[dict]:
    path = FIXTURES / name
    return parse_file(str(path), path.read_bytes(), fmt=fmt, columns=columns)


def _jsonl(rows: list[object]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def parse_bytes(content: bytes, name: str = "a.jsonl", fmt: str = "auto") -> list[dict]:
    return parse_file(name, content, fmt=fmt, columns=COLUMNS)


# ---------------------------------------------------------------- sources and formats

@pytest.mark.parametrize("name", ["standard.jsonl", "standard.json", "standard.parquet", "standard.csv"])
def test_every_file_kind_yields_the_same_pairs(name: str) -> None:
    rows = parse(name)
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in rows] == [(r["prompt"], r["chosen"], r["rejected"]) for r in ORIGINAL]
    assert all(r["kind"] == "text" and r["drop_reason"] == "" and r["error"] == "" for r in rows)
    assert set(rows[0]) == set(ROW_FIELDS)


def test_jsonl_sources_are_file_and_line() -> None:
    rows = parse_bytes(_jsonl([{"prompt": "p", "chosen": "c", "rejected": "r"}]) + b"\n" + _jsonl([{"prompt": "q", "chosen": "c2", "rejected": "r2"}]))
    assert [r["source"] for r in rows] == ["a.jsonl:1", "a.jsonl:3"]  # blank line 2 skipped


def test_column_mapping() -> None:
    rows = parse("mapped_columns.jsonl", columns={"prompt": "question", "chosen": "good", "rejected": "bad"})
    assert [(r["prompt"], r["chosen"]) for r in rows] == [(r["prompt"], r["chosen"]) for r in ORIGINAL]


def test_conversational_rows_keep_messages() -> None:
    rows = parse("conversational.jsonl")
    assert rows[0]["kind"] == "messages"
    assert json.loads(rows[0]["prompt"]) == [{"role": "user", "content": ORIGINAL[0]["prompt"]}]
    assert json.loads(rows[0]["chosen"]) == [{"role": "assistant", "content": ORIGINAL[0]["chosen"].strip()}]
    assert parse("conversational.jsonl", fmt="conversational") == rows  # forcing the detected format


def test_implicit_prompt_hh_style() -> None:
    # The prompt is the longest common prefix; the space before the first differing word stays with
    # the completions, as TRL's extract_prompt does.
    (row,) = parse_bytes(_jsonl([{"chosen": "\n\nHuman: hi\n\nAssistant: Hello there", "rejected": "\n\nHuman: hi\n\nAssistant: Go away"}]))
    assert (row["prompt"], row["chosen"], row["rejected"]) == ("\n\nHuman: hi\n\nAssistant:", " Hello there", " Go away")
    rows = parse("hh_style.jsonl")
    for row, hh in zip(rows, (json.loads(line) for line in (FIXTURES / "hh_style.jsonl").read_text().splitlines())):
        assert row["prompt"].startswith("\n\nHuman: ")
        assert row["prompt"] + row["chosen"] == hh["chosen"] and row["prompt"] + row["rejected"] == hh["rejected"]
        assert row["chosen"].lstrip()[:1] != row["rejected"].lstrip()[:1]


def test_ultrafeedback_prompt_is_the_common_message_prefix() -> None:
    rows = parse("ultrafeedback.jsonl")
    assert rows[0]["kind"] == "messages"
    assert json.loads(rows[0]["prompt"]) == [{"role": "user", "content": ORIGINAL[0]["prompt"]}]
    assert json.loads(rows[0]["rejected"]) == [{"role": "assistant", "content": ORIGINAL[0]["rejected"].strip()}]


def test_saved_dataset_directory() -> None:
    path = str(FIXTURES / "saved_dataset")
    assert is_saved_dataset(path)
    table = load_hf_table(path, split="test", subset=None, revision=None)
    table = table.append_column("__row", pa.array(range(table.num_rows)))
    out = normalize_table(table, path, fmt="auto", columns=COLUMNS)
    assert out["chosen"] == [r["chosen"] for r in ORIGINAL[30:]]
    assert out["source"][0] == f"{path}:row 0"
    with pytest.raises(DataError, match="no split 'validation'"):
        load_hf_table(path, split="validation", subset=None, revision=None)


def test_expand_paths(tmp_path: Path) -> None:
    for name in ("b.jsonl", "a.parquet", "c.csv", "notes.txt"):
        (tmp_path / name).write_text("")
    assert expand_paths(str(tmp_path)) == [str(tmp_path / n) for n in ("a.parquet", "b.jsonl", "c.csv")]
    assert expand_paths(str(tmp_path / "*.jsonl")) == [str(tmp_path / "b.jsonl")]
    assert expand_paths("s3://bucket/prefs/") == ["s3://bucket/prefs/"]
    with pytest.raises(DataError, match="no such file"):
        expand_paths(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match="matches no files"):
        expand_paths(str(tmp_path / "*.csvx"))
    with pytest.raises(DataError, match="unsupported file type"):
        expand_paths(str(tmp_path / "notes.txt"))


# ---------------------------------------------------------------- the bad-input suite

ROW_DROPS = [
    ("invalid_json", b'{"prompt": "p", "chosen": \n', "a.jsonl:1: not valid JSON"),
    ("not_an_object", _jsonl([["p", "c", "r"]]), "a.jsonl:1: expected an object, got list"),
    ("missing_field", _jsonl([{"prompt": "p", "chosen": "c"}]), "a.jsonl:1: missing 'rejected'"),
    ("null_field", _jsonl([{"prompt": "p", "chosen": None, "rejected": "r"}]), "a.jsonl:1: 'chosen' is null"),
    ("non_string", _jsonl([{"prompt": "p", "chosen": 7, "rejected": "r"}]), "a.jsonl:1: 'chosen' is int, expected a string"),
    ("bad_messages", _jsonl([{"prompt": [{"role": "user"}], "chosen": [{"role": "assistant", "content": "c"}], "rejected": [{"role": "assistant", "content": "r"}]}]), "a.jsonl:1: 'prompt' is not a list of {role, content} messages"),
    ("empty_completion", _jsonl([{"prompt": "p", "chosen": "  ", "rejected": "r"}]), "a.jsonl:1: 'chosen' is empty"),
    ("identical_completions", _jsonl([{"prompt": "p", "chosen": "same", "rejected": "same"}]), "a.jsonl:1: chosen and rejected are identical"),
    ("no_common_prompt", _jsonl([{"chosen": "abc", "rejected": "xyz"}]), "a.jsonl:1: chosen and rejected share no prompt prefix"),
    ("non_string", _jsonl([{"chosen": "abc", "rejected": 3}]), "a.jsonl:1: chosen and rejected must both be strings"),
]


@pytest.mark.parametrize("reason, content, detail", ROW_DROPS, ids=[f"{r[0]}-{i}" for i, r in enumerate(ROW_DROPS)])
def test_bad_rows_are_counted_drops_naming_row_and_key(reason: str, content: bytes, detail: str) -> None:
    (bad,) = parse_bytes(content)
    assert bad["drop_reason"] == reason
    assert bad["drop_detail"].startswith(detail)
    assert bad["source"] == "a.jsonl:1" and bad["error"] == ""


FILE_ERRORS = [
    ("empty.jsonl", b"\n  \n", "empty.jsonl: file has no rows"),
    ("latin1.jsonl", '{"prompt": "caf\u00e9"}'.encode("latin-1"), "latin1.jsonl: not UTF-8 text"),
    ("broken.parquet", b"PAR1 not really", "broken.parquet: not a readable Parquet file"),
    ("cols.csv", b"prompt,chosen\np,c\n", "cols.csv: no 'rejected' column"),
    ("array.json", b"[{\"prompt\": 1,", "array.json: not valid JSON"),
]


@pytest.mark.parametrize("name, content, message", FILE_ERRORS, ids=[f[0] for f in FILE_ERRORS])
def test_unusable_files_are_errors_naming_the_file(name: str, content: bytes, message: str) -> None:
    (bad,) = parse_bytes(content, name=name)
    assert bad["error"].startswith(message)
    assert "\n" not in bad["error"]


# ---------------------------------------------------------------- tokenization

def test_tokenize_pair_follows_trl_layout() -> None:
    # BOS once in front of the prompt, EOS after each completion.
    assert tokenize_pair([5, 6], [7], [8, 9], bos_id=1, eos_id=2, max_length=10) == ([1, 5, 6], [7, 2], [8, 9, 2])
    assert tokenize_pair([1, 5], [7], [8], bos_id=1, eos_id=2, max_length=10)[0] == [1, 5]
    assert tokenize_pair([5], [7], [8], bos_id=None, eos_id=2, max_length=10)[0] == [5]


def test_truncation_modes() -> None:
    # Completions are cut to fit max_length after the prompt.
    assert tokenize_pair([5, 6, 7], [10, 11, 12], [20], bos_id=1, eos_id=2, max_length=6) == ([1, 5, 6, 7], [10, 11], [20, 2])
    assert tokenize_pair([5, 6, 7], [10], [20], bos_id=1, eos_id=2, max_length=4) is None  # prompt leaves no room
    # max_prompt_length keeps the end (TRL's default) or the start of the prompt, before BOS.
    kw = dict(bos_id=1, eos_id=2, max_length=8, max_prompt_length=2)
    assert tokenize_pair([5, 6, 7], [10], [20], **kw, truncation_mode="keep_end")[0] == [1, 6, 7]
    assert tokenize_pair([5, 6, 7], [10], [20], **kw, truncation_mode="keep_start")[0] == [1, 5, 6]


def test_split_is_deterministic_and_about_the_fraction() -> None:
    prompts = [f"prompt {i}" for i in range(4000)]
    flags = [is_eval_prompt(p, 0.1) for p in prompts]
    assert flags == [is_eval_prompt(p, 0.1) for p in prompts]
    assert 0.08 < sum(flags) / len(flags) < 0.12


def test_row_id_is_content_based() -> None:
    assert row_id("p", "c", "r") == row_id("p", "c", "r")
    assert row_id("p", "c", "r") != row_id("p", "r", "c")


def _as_batch(rows: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.array([r[k] for r in rows]) for k in ROW_FIELDS}


def test_tokenize_rows_masks_only_completions(tiny_model_dir: str, tokenizer) -> None:
    assert tokenizer_adds_bos(tokenizer)
    rows = parse("standard.jsonl")[:2]
    out = TokenizeRows(tiny_model_dir, None, 64, None, "keep_end", 0.5)(_as_batch(rows))
    p, c = list(out["prompt_ids"][0]), list(out["chosen_ids"][0])
    assert p[0] == tokenizer.bos_token_id and p.count(tokenizer.bos_token_id) == 1
    assert c[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(p[1:]) == ORIGINAL[0]["prompt"]
    assert tokenizer.decode(c[:-1]) == ORIGINAL[0]["chosen"]
    assert list(out["drop_reason"]) == ["", ""]
    assert list(out["is_eval"]) == [is_eval_prompt(r["prompt"], 0.5) for r in ORIGINAL[:2]]


def test_conversational_rows_render_with_the_chat_template(tiny_model_dir: str, tokenizer) -> None:
    rows = parse("conversational.jsonl")[:3] + parse("ultrafeedback.jsonl")[:3]
    out = TokenizeRows(tiny_model_dir, None, 96, None, "keep_end", 0.1)(_as_batch(rows))
    assert list(out["drop_reason"]) == [""] * 6
    assert list(out["warning"]) == [""] * 6  # the rendered prompt is a token prefix of prompt + completion
    prompt_text = tokenizer.decode(list(out["prompt_ids"][0]))
    assert prompt_text == f"<s><|user|> {ORIGINAL[0]['prompt']}\n<|assistant|>"
    # The completion ends where the template ends the turn; no EOS is added (TRL 1.16 adds none).
    assert tokenizer.decode(list(out["chosen_ids"][0])) == f" {ORIGINAL[0]['chosen'].strip()}\n"
    # The same pair from both layouts tokenizes identically.
    assert list(out["chosen_ids"][0]) == list(out["chosen_ids"][3])


def test_tokenize_rows_marks_too_long_and_passes_drops(tiny_model_dir: str) -> None:
    rows = [{"prompt": "word " * 50, "chosen": " a", "rejected": " b", "kind": "text", "source": "f:1", "drop_reason": "", "drop_detail": "", "error": ""},
            {"prompt": "", "chosen": "", "rejected": "", "kind": "text", "source": "f:2", "drop_reason": "missing_field", "drop_detail": "f:2: missing 'prompt'", "error": ""}]
    out = TokenizeRows(tiny_model_dir, None, 16, None, "keep_end", 0.1)(_as_batch(rows))
    assert list(out["drop_reason"]) == ["prompt_too_long", "missing_field"]
    assert list(out["drop_detail"]) == ["f:1: prompt_too_long", "f:2: missing 'prompt'"]
    kept = TokenizeRows(tiny_model_dir, None, 16, 8, "keep_end", 0.1)(_as_batch(rows[:1]))
    assert list(kept["drop_reason"]) == [""] and len(kept["prompt_ids"][0]) == 9  # BOS + 8


def test_source_kind(tmp_path: Path) -> None:
    from dpo_ray.data.parse import source_kind

    assert source_kind("Anthropic/hh-rlhf") == "hub"
    assert source_kind("trl-lib/ultrafeedback_binarized") == "hub"
    assert source_kind(str(FIXTURES / "saved_dataset")) == "saved_dataset"
    assert source_kind(str(FIXTURES / "standard.jsonl")) == "files"
    assert source_kind(str(tmp_path / "missing.jsonl")) == "files"  # a missing local file is reported as such
    assert source_kind("s3://bucket/prefs/*.parquet") == "files"
    assert source_kind("data/*.jsonl") == "files"


def test_unreachable_hub_dataset_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # Both libraries read the switch once, at import; imported by an earlier test they would try the network
    # and the test would wait out its timeouts (20+ s) instead of failing offline at once.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match="data.path no-such-org/no-such-dataset: not a local path, and loading it as a hub dataset failed"):
        load_hf_table("no-such-org/no-such-dataset", split="train", subset=None, revision=None)


def test_block_summaries_merge_to_the_whole_report() -> None:
    """data_report counts in Ray tasks block by block; merged, they must equal one summary of all rows."""
    import hashlib

    import pandas as pd

    from dpo_ray.data.report import build_data_report, hash_sum, merge_summaries, source_order, summarize_block

    rng = np.random.default_rng(3)
    n = 300
    reasons = rng.choice(["", "", "", "missing_field", "identical_completions", "prompt_too_long"], n)
    flags = pd.DataFrame({
        "row_id": [f"{i:024x}" for i in range(n)],
        "row_hash": [hashlib.sha256(str(i).encode()).hexdigest()[:32] for i in range(n)],
        "source": [f"f.jsonl:{i + 1}" for i in rng.permutation(n)],
        "error": [""] * n,
        "drop_reason": reasons,
        "drop_detail": [f"row {i}: {r}" if r else "" for i, r in enumerate(reasons)],
        "warning": rng.choice(["", "", "prompt_not_token_prefix"], n),
        "is_eval": rng.random(n) < 0.2,
        "mixture": rng.integers(0, 3, n),
    })
    duplicates = frozenset(flags.loc[flags["drop_reason"] == "", "source"].iloc[:4])
    whole = summarize_block(flags, duplicates)
    cuts = [0, 17, 18, 150, 299, n]
    merged = merge_summaries(summarize_block(flags.iloc[a:b], duplicates) for a, b in zip(cuts, cuts[1:]))
    assert merged == merge_summaries([whole])
    report = build_data_report(merged, 0.5)
    kept = flags[(flags["drop_reason"] == "") & ~flags["source"].isin(duplicates)]
    assert report["kept"] == len(kept) == report["train_pairs"] + report["eval_pairs"]
    assert report["duplicates_removed"] == 4 and "duplicate" not in report["dropped"]  # not a malformed row
    assert report["dropped"]["missing_field"] == int((reasons == "missing_field").sum())
    assert report["rows_dropped"] == int((reasons != "").sum())
    assert report["duplicate_examples"] == sorted(duplicates, key=source_order)  # the first ones by source
    assert merged["hash_sum"] == hash_sum(kept["row_hash"])
    assert sum(sum(v) for v in merged["mixture"].values()) == len(kept)


def test_sources_sort_by_file_then_line_number() -> None:
    from dpo_ray.data.report import source_order

    sources = ["b.jsonl:2", "a.jsonl:405", "a.jsonl:5", "a.parquet:row 10", "a.parquet:row 9", "x"]
    assert sorted(sources, key=source_order) == ["a.jsonl:5", "a.jsonl:405", "a.parquet:row 9", "a.parquet:row 10", "b.jsonl:2", "x"]
