"""Paths that config, data and the caches all need: local path vs URI, the hub-id test, join,
atomic write, file hashing. Imports nothing from dpo_ray, so none of them import each other."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")  # what data.path may name as files


def is_remote(path: str) -> bool:
    """A URI (s3://, gs://, file://, hf://...) rather than a local path."""
    return "://" in path


def looks_like_hub_id(path: str) -> bool:
    """'name' or 'org/name': no scheme, glob or data-file suffix, not starting with . or /."""
    return (path.count("/") <= 1 and not path.startswith((".", "/", "~")) and not is_remote(path)
            and not any(c in path for c in "*?[") and not path.endswith(DATA_SUFFIXES))


def join(output_dir: str, name: str) -> str:
    """``output_dir``/``name`` for a local path or a URI."""
    return f"{output_dir.rstrip('/')}/{name}" if is_remote(output_dir) else str(Path(output_dir) / name)


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a sibling temporary file: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def file_sha256(path: str | Path, digest: Any = None) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks (or fed into ``digest``)."""
    digest = digest or hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_files(directory: Path, names: list[str]) -> str:
    """One SHA-256 over the names and bytes of ``names`` in ``directory``, in sorted order."""
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(name.encode())
        file_sha256(directory / name, digest)
    return digest.hexdigest()
