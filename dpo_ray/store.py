"""Reference log-prob cache: content keys and committed manifests. Pure ring: no Ray import.

A cache entry lives at ``<cache_dir>/<key>/``: one or more ``data-<id>/`` Parquet folders and a
``manifest.json`` naming the folder that is complete. The manifest is written last, in one atomic
step (rename locally; a single object PUT on s3/gs), so a reader that finds no manifest, or a
manifest whose row count does not match, treats the entry as a miss: a partial cache is never used.
The manifest also records each data file's relative path, size and (local stores) SHA-256; a read
checks them (CacheStore.check), so a file damaged or deleted after the commit is a miss too. On
s3/gs only sizes are checked: objects are written whole and checksummed by the store itself, and
hashing would read the entry a second time.

The key hashes everything the log-probs depend on and nothing they do not (beta, the learning rate,
the loss, the run): the reference model's identity, the tokenizer, the tokenized pairs themselves,
the scoring dtype and the length settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from dpo_ray.data.report import hash_sum
from dpo_ray.paths import file_sha256, hash_files, is_remote

KEY_VERSION = 3  # 3: the data part is DataId (row count + sum of row hashes)
"""Bump when what the scorer computes or stores changes; old entries then miss (2: the mixture column)."""
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model", "vocab.json", "merges.txt")


def model_identity(name_or_path: str, revision: str | None) -> dict[str, str]:
    """Weights and tokenizer identity: content hashes of a local directory's files, or hub id + revision.

    Never a state dict in memory (it may be sharded, and it costs a model load).
    """
    path = Path(name_or_path)
    if not path.is_dir():
        ref = f"hub:{name_or_path}@{revision or 'main'}"
        return {"weights": ref, "tokenizer": ref}
    files = [p.name for p in path.iterdir() if p.is_file()]
    weights = [f for f in files if f.endswith(WEIGHT_SUFFIXES) or f == "config.json"]
    tokenizer = [f for f in files if f in TOKENIZER_FILES]
    return {"weights": hash_files(path, weights), "tokenizer": hash_files(path, tokenizer)}


@dataclass(frozen=True)
class DataId:
    """The tokenized pairs' identity for the cache key: how many, and the order-free sum of their row
    hashes (each covers a row id, its token ids and source index). Ray tasks compute the sum block by
    block, so the driver holds two numbers, not one hash per pair."""

    rows: int
    hash_sum: int

    @classmethod
    def of(cls, row_hashes: list[str]) -> "DataId":
        return cls(len(row_hashes), hash_sum(row_hashes))

    def key(self) -> str:
        return hashlib.sha256(f"{self.rows}:{self.hash_sum:032x}".encode()).hexdigest()


def cache_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps({"v": KEY_VERSION, **parts}, sort_keys=True).encode()).hexdigest()[:32]


def versions(packages: tuple[str, ...] = ("torch", "transformers")) -> dict[str, str]:
    """Installed versions of ``packages`` (a manifest records them; a key may hold them)."""
    return {p: version(p) for p in packages}


class CacheStore:
    """Manifest reads and writes on a local path or an s3:// / gs:// URI."""

    def __init__(self, cache_dir: str) -> None:
        self.root = cache_dir if is_remote(cache_dir) else os.path.abspath(os.path.expanduser(cache_dir))
        self.fs, self.base = pafs.FileSystem.from_uri(self.root if is_remote(self.root) else f"file://{self.root}")

    def entry_uri(self, key: str) -> str:
        return f"{self.root.rstrip('/')}/{key}"

    def new_data_uri(self, key: str) -> str:
        return f"{self.entry_uri(key)}/data-{uuid.uuid4().hex[:12]}"

    def data_uri(self, key: str, manifest: dict[str, Any]) -> str:
        """The entry's committed data folder (relative in the manifest, so a moved cache_dir still reads)."""
        return f"{self.entry_uri(key)}/{manifest['data_dir']}"

    def _fs_path(self, uri: str) -> str:
        return f"{self.base.rstrip('/')}{uri[len(self.root.rstrip('/')):]}"

    def file_records(self, data_uri: str) -> list[dict[str, Any]]:
        """Each file under a data folder this store wrote: relative path, size, and SHA-256 when local."""
        base = self._fs_path(data_uri)
        local = isinstance(self.fs, pafs.LocalFileSystem)
        infos = sorted(self.fs.get_file_info(pafs.FileSelector(base, recursive=True)), key=lambda i: i.path)
        return [{"path": i.path[len(base) + 1:], "size": i.size, **({"sha256": file_sha256(i.path)} if local else {})}
                for i in infos if i.type == pafs.FileType.File]

    def data_files(self, key: str, manifest: dict[str, Any]) -> list[str]:
        """The URIs of the files the manifest records: exactly those are read, nothing added later."""
        return [f"{self.data_uri(key, manifest)}/{r['path']}" for r in manifest["files"]]

    def check(self, key: str, manifest: dict[str, Any]) -> str | None:
        """What is wrong with a committed entry's files, as the end of a sentence; None when each
        recorded file is there with its size (and, locally, its SHA-256)."""
        if "files" not in manifest or "data_dir" not in manifest:
            return "has no file records (an older dpo_ray wrote it)"
        folder = self._fs_path(self.data_uri(key, manifest))
        for record in manifest["files"]:
            path, name = f"{folder}/{record['path']}", f"{manifest['data_dir']}/{record['path']}"
            info = self.fs.get_file_info(path)
            if info.type != pafs.FileType.File:
                return f"is damaged ({name} is missing)"
            if info.size != record["size"]:
                return f"is damaged ({name} is {info.size} bytes, the manifest says {record['size']})"
            if "sha256" in record and file_sha256(path) != record["sha256"]:
                return f"is damaged ({name} does not match its SHA-256)"
        return None

    def read_manifest(self, key: str) -> dict[str, Any] | None:
        path = f"{self.base.rstrip('/')}/{key}/manifest.json"
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(path) as f:
            manifest = json.loads(f.read().decode())
        return manifest if manifest.get("key") == key else None

    def commit(self, key: str, manifest: dict[str, Any]) -> None:
        """Write the manifest last and atomically: the entry exists from this moment on."""
        entry = f"{self.base.rstrip('/')}/{key}"
        self.fs.create_dir(entry, recursive=True)
        payload = json.dumps({**manifest, "key": key}, indent=2, sort_keys=True).encode()
        if isinstance(self.fs, pafs.LocalFileSystem):
            tmp = f"{entry}/.manifest-{uuid.uuid4().hex[:8]}.tmp"
            with self.fs.open_output_stream(tmp) as f:
                f.write(payload)
            os.replace(tmp, f"{entry}/manifest.json")
        else:
            with self.fs.open_output_stream(f"{entry}/manifest.json") as f:  # one PUT: atomic on object stores
                f.write(payload)
