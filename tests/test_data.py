from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dpo_ray.data import (
    DataError, expand_paths, is_eval_prompt, parse_file, row_id, tokenize_batch, tokenize_pair,
    tokenizer_adds_bos,
)


def _jsonl(rows: list[object]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def test_parse_jsonl_keeps_line_numbers() -> None:
    rows = parse_file("a.jsonl", _jsonl([{"prompt": "p", "chosen": "c", "rejected": "r", "extra": 1}]) + b"\n" + _jsonl([{"prompt": "q", "chosen": "c2", "rejected": "r2"}]))
    assert [r["source"] for r in rows] == ["a.jsonl:1", "a.jsonl:3"]  # blank line 2 skipped
    assert rows[1] == {"prompt": "q", "chosen": "c2", "rejected": "r2", "source": "a.jsonl:3", "error": ""}


def test_parse_parquet(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"prompt": ["p1", "p2"], "chosen": ["c1", "c2"], "rejected": ["r1", "r2"]}), path)
    rows = parse_file(str(path), path.read_bytes())
    assert [r["chosen"] for r in rows] == ["c1", "c2"]
    assert rows[1]["source"] == f"{path}:row 1" and rows[1]["error"] == ""


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": "p", "chosen": "c"}, "a.jsonl:1: missing 'rejected'"),
        ({"prompt": "p", "chosen": 3, "rejected": "r"}, "a.jsonl:1: 'chosen' is int, expected a string"),
        ({"prompt": None, "chosen": "c", "rejected": "r"}, "a.jsonl:1: 'prompt' is null"),
        ({"prompt": "p", "chosen": "  ", "rejected": "r"}, "a.jsonl:1: 'chosen' is empty"),
        (["p", "c", "r"], "a.jsonl:1: expected an object"),
    ],
)
def test_bad_rows_become_error_rows_naming_row_and_key(row: object, message: str) -> None:
    (bad,) = parse_file("a.jsonl", _jsonl([row]))
    assert bad["error"].startswith(message)
    assert bad["source"] == "a.jsonl:1"


def test_invalid_json_names_file_and_line() -> None:
    (bad,) = parse_file("a.jsonl", _jsonl([{"prompt": "p", "chosen": "c", "rejected": "r"}]) + b"{nope\n")
    assert bad["error"].startswith("a.jsonl:2: not valid JSON")


def test_empty_file_is_an_error() -> None:
    (bad,) = parse_file("empty.jsonl", b"\n  \n")
    assert "empty.jsonl: file has no rows" in bad["error"]


def test_parquet_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"prompt": ["p"], "chosen": ["c"]}), path)
    (bad,) = parse_file(str(path), path.read_bytes())
    assert "no 'rejected' column" in bad["error"]


def test_expand_paths(tmp_path: Path) -> None:
    for name in ("b.jsonl", "a.parquet", "notes.txt"):
        (tmp_path / name).write_text("")
    assert expand_paths(str(tmp_path)) == [str(tmp_path / "a.parquet"), str(tmp_path / "b.jsonl")]
    assert expand_paths(str(tmp_path / "*.jsonl")) == [str(tmp_path / "b.jsonl")]
    with pytest.raises(DataError, match="no such file"):
        expand_paths(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match="matches no files"):
        expand_paths(str(tmp_path / "*.csvx"))
    with pytest.raises(DataError, match="unsupported file type"):
        expand_paths(str(tmp_path / "notes.txt"))


def test_tokenize_pair_follows_trl_layout() -> None:
    # BOS once in front of the prompt, EOS after each completion.
    assert tokenize_pair([5, 6], [7], [8, 9], bos_id=1, eos_id=2, max_length=10) == ([1, 5, 6], [7, 2], [8, 9, 2])
    # A prompt that already starts with BOS gets no second one; no BOS when the tokenizer has none.
    assert tokenize_pair([1, 5], [7], [8], bos_id=1, eos_id=2, max_length=10)[0] == [1, 5]
    assert tokenize_pair([5], [7], [8], bos_id=None, eos_id=2, max_length=10)[0] == [5]


def test_tokenize_pair_truncates_keeping_the_start() -> None:
    prompt, chosen, rejected = tokenize_pair([5, 6, 7], [10, 11, 12], [20], bos_id=1, eos_id=2, max_length=6)
    assert prompt == [1, 5, 6, 7]
    assert chosen == [10, 11] and rejected == [20, 2]
    assert tokenize_pair([5, 6, 7], [10], [20], bos_id=1, eos_id=2, max_length=4) is None  # no room left


def test_split_is_deterministic_and_about_the_fraction() -> None:
    prompts = [f"prompt {i}" for i in range(4000)]
    flags = [is_eval_prompt(p, 0.1) for p in prompts]
    assert flags == [is_eval_prompt(p, 0.1) for p in prompts]
    assert 0.08 < sum(flags) / len(flags) < 0.12


def test_row_id_is_content_based() -> None:
    assert row_id("p", "c", "r") == row_id("p", "c", "r")
    assert row_id("p", "c", "r") != row_id("p", "r", "c")


def test_tokenize_batch_masks_only_completions(tokenizer) -> None:
    assert tokenizer_adds_bos(tokenizer)
    batch = {
        "prompt": np.array(["Ana asks for a positive review of the lamp.", "Same prompt"]),
        "chosen": np.array([" The lamp is great.", " yes"]),
        "rejected": np.array([" The lamp is awful.", " no"]),
        "source": np.array(["f:1", "f:2"]),
        "error": np.array(["", ""]),
    }
    out = tokenize_batch(tokenizer, batch, max_length=64, eval_fraction=0.5)
    p, c = list(out["prompt_ids"][0]), list(out["chosen_ids"][0])
    assert p[0] == tokenizer.bos_token_id and p.count(tokenizer.bos_token_id) == 1
    assert c[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(p[1:]) == "Ana asks for a positive review of the lamp."
    assert tokenizer.decode(c[:-1]) == " The lamp is great."
    assert list(out["drop_reason"]) == ["", ""]
    assert list(out["is_eval"]) == [is_eval_prompt(str(x), 0.5) for x in batch["prompt"]]


def test_tokenize_batch_marks_too_long_and_error_rows(tokenizer) -> None:
    batch = {
        "prompt": np.array(["word " * 50, ""]), "chosen": np.array([" a", ""]), "rejected": np.array([" b", ""]),
        "source": np.array(["f:1", "f:2"]), "error": np.array(["", "f:2: missing 'prompt'"]),
    }
    out = tokenize_batch(tokenizer, batch, max_length=16, eval_fraction=0.1)
    assert list(out["drop_reason"]) == ["prompt_too_long", "error"]
    assert list(out["error"]) == ["", "f:2: missing 'prompt'"]
