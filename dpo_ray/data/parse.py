"""Preference rows: find files, parse records, normalise formats; row ids and the train/eval split key.

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

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from dpo_ray.data.formats import RowDrop, normalize_record
from dpo_ray.paths import DATA_SUFFIXES, file_sha256, is_remote, looks_like_hub_id

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
