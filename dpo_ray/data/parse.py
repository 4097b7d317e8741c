"""Preference rows: find files, parse records, normalise formats, tokenize pairs, split train/eval.

Pure ring: no Ray import. Ray Data calls these functions from its tasks (see data/stage.py).

Row-level problems become counted drops (``drop_reason``, formats.DROP_REASONS) with the row's
``source`` (``file:line`` for JSON Lines, ``file:row N`` otherwise). File-level problems (unreadable,
empty, a columnar file without a needed column) travel as ``error`` and stop the run: Ray Data tasks
lose exception types on the way to the driver, so both travel as data.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from dpo_ray.data.formats import RowDrop, normalize_record
from dpo_ray.paths import DATA_SUFFIXES, file_sha256, is_remote, looks_like_hub_id
from dpo_ray.data.tokenize import PairTokenizer, tokenize_pair, tokenizer_adds_bos  # noqa: F401 (re-exported)

ROW_FIELDS = ("prompt", "chosen", "rejected", "kind", "source", "drop_reason", "drop_detail", "error")


class DataError(ValueError):
    """Input data cannot be used; the message names the file, row or column and what to do."""


def is_saved_dataset(path: str) -> bool:
    """A directory written by datasets' save_to_disk (a Dataset or a DatasetDict)."""
    return os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, name)) for name in ("state.json", "dataset_dict.json")
    )


def source_kind(path: str) -> str:
    """'saved_dataset', 'hub' (a dataset id that is not a local path) or 'files'."""
    if is_saved_dataset(path):
        return "saved_dataset"
    if not os.path.exists(path) and looks_like_hub_id(path):
        return "hub"
    return "files"


def expand_paths(path: str, where: str = "data.path") -> list[str]:
    """A file, a directory of data files, or a glob -> sorted list of files. Errors name the path
    and ``where`` it comes from (``data.sources <name>: path`` for a mixture's source).

    Remote URIs (s3://, gs://, file://) are passed to Ray Data's readers as they are.
    """
    if is_remote(path):
        return [path]
    if os.path.isdir(path):
        files = sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(DATA_SUFFIXES))
        if not files:
            raise DataError(f"{where} {path}: directory has no {'/'.join(DATA_SUFFIXES)} files")
        return files
    if any(ch in path for ch in "*?["):
        files = sorted(f for f in glob.glob(path, recursive=True) if os.path.isfile(f))
        if not files:
            raise DataError(f"{where} {path}: the glob matches no files")
    elif os.path.isfile(path):
        files = [path]
    else:
        raise DataError(f"{where} {path}: no such file or directory (a hub dataset id needs no leading ./ or /)")
    wrong = [f for f in files if not f.endswith(DATA_SUFFIXES)]
    if wrong:
        raise DataError(f"{wrong[0]}: unsupported file type; use {', '.join(DATA_SUFFIXES)}")
    return files


def input_identity(path: str, *, split: str, subset: str | None, revision: str | None) -> dict[str, Any] | None:
    """What the input data is, by content: each local file's SHA-256 (a saved dataset's files too),
    a remote file's size and modification time, a hub dataset's id and pinned revision.
    None when the input cannot be pinned (a hub dataset without data.revision)."""
    kind = source_kind(path)
    if kind == "hub":
        return {"hub": path, "split": split, "subset": subset, "revision": revision} if revision else None
    if kind == "saved_dataset":
        files = sorted(os.path.relpath(os.path.join(d, n), path) for d, _, names in os.walk(path) for n in names)
        return {"saved_dataset": {f: file_sha256(os.path.join(path, f)) for f in files}, "split": split}
    ident: dict[str, Any] = {}
    for f in expand_paths(path):
        if is_remote(f):
            import pyarrow.fs as pafs

            fs, inner = pafs.FileSystem.from_uri(f)
            infos = [fs.get_file_info(inner)]
            if infos[0].type == pafs.FileType.Directory:
                infos = [i for i in fs.get_file_info(pafs.FileSelector(inner, recursive=True)) if i.type == pafs.FileType.File]
            ident.update({f"{f}::{i.path}": f"size={i.size} mtime={i.mtime_ns}" for i in infos})
        else:
            ident[os.path.abspath(f)] = file_sha256(f)
    return {"files": ident}


def parse_file(path: str, content: bytes, *, fmt: str, columns: dict[str, str]) -> list[dict[str, Any]]:
    """One file's bytes -> normalised rows (see module docstring)."""
    try:
        records = _records(path, content, columns)
    except DataError as err:
        return [_row(path, error=str(err))]
    if not records:
        return [_row(path, error=f"{path}: file has no rows; remove it or fill it with preference rows")]
    return [normalize_one(rec, where, fmt=fmt, columns=columns) for where, rec in records]


def normalize_one(rec: Any, where: str, *, fmt: str, columns: dict[str, str]) -> dict[str, Any]:
    if isinstance(rec, RowDrop):  # a line that did not parse
        return _row(where, drop=rec)
    try:
        return {**_row(where), **normalize_record(rec, fmt=fmt, columns=columns)}
    except RowDrop as drop:
        return _row(where, drop=drop)


def _row(where: str, *, drop: RowDrop | None = None, error: str = "") -> dict[str, Any]:
    return {
        "prompt": "", "chosen": "", "rejected": "", "kind": "text", "source": where,
        "drop_reason": drop.reason if drop else "", "drop_detail": f"{where}: {drop}" if drop else "", "error": error,
    }


def _records(path: str, content: bytes, columns: dict[str, str]) -> list[tuple[str, Any]]:
    name = path.lower()
    if name.endswith((".parquet", ".csv")):
        try:
            table = pq.read_table(io.BytesIO(content)) if name.endswith(".parquet") else pacsv.read_csv(io.BytesIO(content))
        except (pa.ArrowInvalid, pa.ArrowException, OSError) as err:
            raise DataError(f"{path}: not a readable {'Parquet' if name.endswith('.parquet') else 'CSV'} file ({err})") from err
        needed = [columns["chosen"], columns["rejected"]]
        missing = [c for c in needed if c not in table.column_names]
        if missing:
            raise DataError(
                f"{path}: no '{missing[0]}' column (columns: {', '.join(table.column_names)}); "
                "map yours with data.columns.chosen=... / data.columns.rejected=..."
            )
        return [(f"{path}:row {i}", rec) for i, rec in enumerate(table.to_pylist())]
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    if name.endswith(".json") and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from err
        return [(f"{path}:row {i}", rec) for i, rec in enumerate(items)]
    records: list[tuple[str, Any]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((f"{path}:{lineno}", json.loads(line)))
        except json.JSONDecodeError as err:
            records.append((f"{path}:{lineno}", RowDrop("invalid_json", f"not valid JSON ({err.msg})")))
    return records


def row_id(prompt: str, chosen: str, rejected: str) -> str:
    """Stable content id of a pair (dedup, and joins cached reference log-probs back to rows)."""
    payload = json.dumps([prompt, chosen, rejected], ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(payload).hexdigest()[:24]


def split_key(prompt: str) -> float:
    """A prompt's place in [0, 1): pairs with split_key < data.eval_fraction are held out, so one
    prompt never lands on both sides and the split is the same in every run."""
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def is_eval_prompt(prompt: str, eval_fraction: float) -> bool:
    return split_key(prompt) < eval_fraction


def row_hash(rid: str, prompt_ids: list[int], chosen_ids: list[int], rejected_ids: list[int], mixture: int = 0) -> str:
    """Hash of a tokenized pair and its source index: the unit of the reference cache's data key."""
    payload = json.dumps([rid, list(prompt_ids), list(chosen_ids), list(rejected_ids)] + ([mixture] if mixture else [])).encode()
    return hashlib.sha256(payload).hexdigest()[:32]


class TokenizeRows:
    """Callable class for Ray Data's map_batches: loads the tokenizer once per actor."""

    def __init__(self, name_or_path: str, revision: str | None, max_length: int, max_prompt_length: int | None,
                 truncation_mode: str, eval_fraction: float, trust_remote_code: bool = False,
                 eval_sources: tuple[int, ...] = (), tokenize_jointly: bool = False) -> None:
        from dpo_ray.modeling import load_tokenizer  # transformers import only where tokenizing happens

        self.tokenizer = load_tokenizer(name_or_path, revision, trust_remote_code)
        self.pairs = PairTokenizer(self.tokenizer, jointly=tokenize_jointly)
        self.lengths = {"max_length": max_length, "max_prompt_length": max_prompt_length, "truncation_mode": truncation_mode}
        self.eval_fraction = eval_fraction
        self.eval_sources = set(eval_sources)  # explicit eval sources: no prompt-hash split at all

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list[Any]] = {k: [] for k in (
            "row_id", "row_hash", "source", "error", "drop_reason", "drop_detail", "warning", "split_key", "is_eval",
            "seq_len", "prompt_ids", "chosen_ids", "rejected_ids", "mixture",
        )}
        mixtures = batch["mixture"] if "mixture" in batch else np.zeros(len(batch["source"]), dtype=np.int64)
        for i in range(len(batch["source"])):
            mixture = int(mixtures[i])
            row = {k: str(batch[k][i]) for k in ROW_FIELDS}
            ids, warning = None, ""
            if not (row["error"] or row["drop_reason"]):
                try:
                    ids, warning = self._ids(row)
                except RowDrop as err:  # the chat template raised (PairTokenizer.render): this row only
                    row["drop_reason"], row["drop_detail"] = err.reason, f"{row['source']}: {err}"
            drop = row["drop_reason"] or ("" if row["error"] or ids is not None else "prompt_too_long")
            if isinstance(ids, str):  # a chat-template drop reason
                drop, ids = ids, None
            p, c, r = ids if ids is not None else ([], [], [])
            rid = row_id(row["prompt"], row["chosen"], row["rejected"])
            out["row_id"].append(rid)
            out["row_hash"].append(row_hash(rid, p, c, r, mixture))
            out["mixture"].append(mixture)
            out["source"].append(row["source"])
            out["error"].append(row["error"])
            out["drop_reason"].append(drop)
            out["drop_detail"].append(row["drop_detail"] or (f"{row['source']}: {drop}" if drop else ""))
            out["warning"].append(warning)
            key = split_key(row["prompt"])
            if self.eval_sources:
                key = 0.0 if mixture in self.eval_sources else 1.0
            out["split_key"].append(key)
            out["is_eval"].append(key < self.eval_fraction)
            out["seq_len"].append(len(p) + max(len(c), len(r)))  # padded width this pair needs
            out["prompt_ids"].append(np.asarray(p, dtype=np.int32))
            out["chosen_ids"].append(np.asarray(c, dtype=np.int32))
            out["rejected_ids"].append(np.asarray(r, dtype=np.int32))
        return {k: _column(v) for k, v in out.items()}

    def _ids(self, row: dict[str, str]) -> tuple[Any, str]:
        """Token ids of one valid row (data/tokenize.py); a str in place of ids is a drop reason."""
        if row["kind"] == "messages":
            pair = self.pairs.chat(*(json.loads(row[k]) for k in ("prompt", "chosen", "rejected")))
            if pair is None:
                return "chat_template_mismatch", ""
            bos_id = None  # the chat template writes BOS where the model wants one
        else:
            pair = self.pairs.text(row["prompt"], row["chosen"], row["rejected"], implicit=row["kind"] == "implicit")
            bos_id = self.pairs.bos_id
        prompt_ids, chosen_ids, rejected_ids, warning = pair
        if not prompt_ids and bos_id is None and row["kind"] == "implicit":
            return "no_common_prompt", ""  # the transcripts share no token: nothing to condition on
        ids = tokenize_pair(prompt_ids, chosen_ids, rejected_ids, bos_id=bos_id, eos_id=None, **self.lengths)
        return ids, warning


def _column(values: list[Any]) -> np.ndarray:
    if values and isinstance(values[0], np.ndarray):
        col = np.empty(len(values), dtype=object)  # ragged token lists
        col[:] = values
        return col
    return np.asarray(values)


def load_hf_table(path: str, *, split: str, subset: str | None, revision: str | None) -> pa.Table:
    """A directory saved by datasets, or a hub dataset id -> one Arrow table (memory-mapped where
    datasets keeps it so). Hub ids download through datasets' own cache."""
    import datasets  # only for these two source kinds

    if is_saved_dataset(path):
        loaded = datasets.load_from_disk(path)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DataError(f"data.path {path}: no split '{split}' (splits: {', '.join(loaded)}); set data.split")
            loaded = loaded[split]
    else:
        try:
            loaded = datasets.load_dataset(path, name=subset, split=split, revision=revision)
        except (FileNotFoundError, ConnectionError, ValueError) as err:  # not found, offline, bad split/subset
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DataError(f"data.path {path}: not a local path, and loading it as a hub dataset failed ({first})") from err
    return loaded.with_format("arrow")[:]


def normalize_table(table: pa.Table, name: str, *, fmt: str, columns: dict[str, str]) -> dict[str, list[Any]]:
    """A batch of an in-memory table with a ``__row`` column -> normalised rows, sources ``name:row N``."""
    rows_idx = table.column("__row").to_pylist()
    records = table.drop_columns(["__row"]).to_pylist()
    rows = [normalize_one(rec, f"{name}:row {i}", fmt=fmt, columns=columns) for i, rec in zip(rows_idx, records)]
    return {k: [r[k] for r in rows] for k in ROW_FIELDS}
