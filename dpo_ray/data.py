"""Preference rows: find files, parse and validate them, tokenize pairs, split train/eval.

Pure ring: no Ray import. Ray Data calls these functions from its tasks (see pipeline.py).
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
from typing import Any

import numpy as np
import pyarrow.parquet as pq

REQUIRED_COLUMNS = ("prompt", "chosen", "rejected")
SUFFIXES = (".jsonl", ".json", ".parquet")


class DataError(ValueError):
    """Input data cannot be used; the message names the file, row or column and what to do."""


def expand_paths(path: str) -> list[str]:
    """A file, a directory of data files, or a glob -> sorted list of files. Errors name the path."""
    if os.path.isdir(path):
        files = sorted(
            os.path.join(path, name) for name in os.listdir(path) if name.endswith(SUFFIXES)
        )
        if not files:
            raise DataError(f"data.path {path}: directory has no {'/'.join(SUFFIXES)} files")
        return files
    if any(ch in path for ch in "*?["):
        files = sorted(f for f in glob.glob(path, recursive=True) if os.path.isfile(f))
        if not files:
            raise DataError(f"data.path {path}: the glob matches no files")
    elif os.path.isfile(path):
        files = [path]
    else:
        raise DataError(f"data.path {path}: no such file or directory")
    wrong = [f for f in files if not f.endswith(SUFFIXES)]
    if wrong:
        raise DataError(f"{wrong[0]}: unsupported file type; use {', '.join(SUFFIXES)}")
    return files


def parse_file(path: str, content: bytes) -> list[dict[str, Any]]:
    """One file's bytes -> rows {prompt, chosen, rejected, source, error}.

    ``source`` is ``file:line`` (JSONL, 1-based) or ``file:row N`` (Parquet, 0-based). A row that
    cannot be used keeps empty texts and says why in ``error`` (a file that cannot be read becomes
    one such row): Ray Data tasks lose exception types on the way to the driver, so errors travel
    as data and the driver raises the first one (see pipeline._count_rows).
    """
    try:
        numbered = _records(path, content)
    except DataError as err:
        return [_error_row(path, str(err))]
    if not numbered:
        return [_error_row(path, f"{path}: file has no rows; remove it or fill it with prompt/chosen/rejected rows")]
    rows = []
    for where, rec in numbered:
        try:
            rows.append(validate_row(rec, where))
        except DataError as err:
            rows.append(_error_row(where, str(err)))
    return rows


def _records(path: str, content: bytes) -> list[tuple[str, Any]]:
    if path.endswith(".parquet"):
        try:
            table = pq.read_table(io.BytesIO(content))
        except Exception as err:  # pyarrow raises several types for a corrupt file
            raise DataError(f"{path}: not a readable Parquet file ({err})") from err
        missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
        if missing:
            raise DataError(
                f"{path}: no '{missing[0]}' column (columns: {', '.join(table.column_names)}); "
                "every row needs prompt, chosen and rejected strings"
            )
        return [(f"{path}:row {i}", rec) for i, rec in enumerate(table.select(list(REQUIRED_COLUMNS)).to_pylist())]
    numbered = []
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{lineno}: not valid JSON ({err.msg}); one object per line") from err
        numbered.append((f"{path}:{lineno}", rec))
    return numbered


def _error_row(where: str, message: str) -> dict[str, Any]:
    return {"prompt": "", "chosen": "", "rejected": "", "source": where, "error": message}


def validate_row(rec: Any, where: str) -> dict[str, Any]:
    """Check one record; return it with its ``source``. Raises DataError naming row and key."""
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected an object with prompt/chosen/rejected, got {type(rec).__name__}")
    for col in REQUIRED_COLUMNS:
        if col not in rec:
            raise DataError(f"{where}: missing '{col}'; every row needs prompt, chosen and rejected strings")
        value = rec[col]
        if not isinstance(value, str):
            kind = "null" if value is None else type(value).__name__
            raise DataError(f"{where}: '{col}' is {kind}, expected a string")
    for col in ("chosen", "rejected"):
        if not rec[col].strip():
            raise DataError(f"{where}: '{col}' is empty; a preference pair needs two non-empty completions")
    return {"prompt": rec["prompt"], "chosen": rec["chosen"], "rejected": rec["rejected"], "source": where, "error": ""}


def row_id(prompt: str, chosen: str, rejected: str) -> str:
    """Stable content id of a pair (joins cached reference log-probs back to rows)."""
    payload = json.dumps([prompt, chosen, rejected], ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(payload).hexdigest()[:24]


def is_eval_prompt(prompt: str, eval_fraction: float) -> bool:
    """Deterministic split by a hash of the prompt: one prompt never lands on both sides."""
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < eval_fraction


def tokenizer_adds_bos(tokenizer: Any) -> bool:
    """True when the tokenizer itself puts BOS in front of text (Llama-style), as TRL checks."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("x")["input_ids"][:1] == [bos]


def tokenize_pair(
    prompt_ids: list[int],
    chosen_ids: list[int],
    rejected_ids: list[int],
    *,
    bos_id: int | None,
    eos_id: int,
    max_length: int,
) -> tuple[list[int], list[int], list[int]] | None:
    """TRL's layout: [BOS] + prompt, completion + [EOS], cut at max_length keeping the start.

    Returns None when the prompt leaves no room for a completion token (the row is dropped and
    counted as ``prompt_too_long``).
    """
    if bos_id is not None and prompt_ids[:1] != [bos_id]:
        prompt_ids = [bos_id] + prompt_ids
    room = max_length - len(prompt_ids)
    if room < 1:
        return None
    return prompt_ids, (chosen_ids + [eos_id])[:room], (rejected_ids + [eos_id])[:room]


def tokenize_batch(tokenizer: Any, batch: dict[str, np.ndarray], *, max_length: int, eval_fraction: float) -> dict[str, np.ndarray]:
    """Ray Data batch of text rows -> token ids, row ids, split flag and drop reason per row."""
    prompts = [str(p) for p in batch["prompt"]]
    chosen = [str(c) for c in batch["chosen"]]
    rejected = [str(r) for r in batch["rejected"]]
    enc = lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]  # noqa: E731
    p_ids, c_ids, r_ids = enc(prompts), enc(chosen), enc(rejected)
    bos_id = tokenizer.bos_token_id if tokenizer_adds_bos(tokenizer) else None
    out: dict[str, list[Any]] = {k: [] for k in ("row_id", "source", "error", "prompt_ids", "chosen_ids", "rejected_ids", "is_eval", "drop_reason")}
    for i, prompt in enumerate(prompts):
        error = str(batch["error"][i])
        out["error"].append(error)
        tokens = None if error else tokenize_pair(p_ids[i], c_ids[i], r_ids[i], bos_id=bos_id, eos_id=tokenizer.eos_token_id, max_length=max_length)
        out["row_id"].append(row_id(prompt, chosen[i], rejected[i]))
        out["source"].append(str(batch["source"][i]))
        out["is_eval"].append(is_eval_prompt(prompt, eval_fraction))
        out["drop_reason"].append("error" if error else "" if tokens is not None else "prompt_too_long")
        p, c, r = tokens if tokens is not None else ([], [], [])
        out["prompt_ids"].append(np.asarray(p, dtype=np.int32))
        out["chosen_ids"].append(np.asarray(c, dtype=np.int32))
        out["rejected_ids"].append(np.asarray(r, dtype=np.int32))
    return {k: _column(v) for k, v in out.items()}


def _column(values: list[Any]) -> np.ndarray:
    if values and isinstance(values[0], np.ndarray):
        col = np.empty(len(values), dtype=object)  # ragged token lists
        col[:] = values
        return col
    return np.asarray(values)


class TokenizeRows:
    """Callable class for Ray Data's map_batches: loads the tokenizer once per actor."""

    def __init__(self, name_or_path: str, revision: str | None, max_length: int, eval_fraction: float) -> None:
        from dpo_ray.modeling import load_tokenizer  # transformers import only where tokenizing happens

        self.tokenizer = load_tokenizer(name_or_path, revision)
        self.max_length = max_length
        self.eval_fraction = eval_fraction

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return tokenize_batch(self.tokenizer, batch, max_length=self.max_length, eval_fraction=self.eval_fraction)
