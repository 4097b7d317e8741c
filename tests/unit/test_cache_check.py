"""The messages and cache checks behind test_bad_input.py's runs, without a run: the Ctrl+C line and each kind of cache damage."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from dpo_ray.store import CacheStore
from dpo_ray.train.stopping import interrupted_message


def test_interrupted_message_without_a_checkpoint() -> None:
    assert interrupted_message(7, 60, "/o", has_checkpoint=False) == (
        "interrupted at step 7 of 60; no model was written; no checkpoint to resume from "
        "(train.checkpoint_every=N saves one every N steps)")


def test_cache_check_finds_each_kind_of_damage(tmp_path: Path) -> None:
    store = CacheStore(str(tmp_path / "cache"))
    key = "k" * 32
    data_uri = store.new_data_uri(key)
    Path(data_uri).mkdir(parents=True)
    for i in range(2):
        pq.write_table(pa.table({"x": list(range(100 * i, 100 * i + 100))}), f"{data_uri}/part-{i}.parquet")
    store.commit(key, {"rows": 200, "data_uri": data_uri, "data_dir": Path(data_uri).name, "files": store.file_records(data_uri)})
    manifest = store.read_manifest(key)
    assert [r["path"] for r in manifest["files"]] == ["part-0.parquet", "part-1.parquet"]
    assert store.check(key, manifest) is None
    part = Path(data_uri, "part-1.parquet")
    good = part.read_bytes()
    part.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # same size, one bit flipped
    assert store.check(key, manifest) == f"is damaged ({Path(data_uri).name}/part-1.parquet does not match its SHA-256)"
    part.write_bytes(good[:50])
    assert store.check(key, manifest) == f"is damaged ({Path(data_uri).name}/part-1.parquet is 50 bytes, the manifest says {len(good)})"
    part.unlink()
    assert store.check(key, manifest) == f"is damaged ({Path(data_uri).name}/part-1.parquet is missing)"
    part.write_bytes(good)
    Path(data_uri, "part-2.parquet").write_bytes(good)  # a file the manifest does not record is never read
    assert store.check(key, manifest) is None and len(store.data_files(key, manifest)) == 2
    old = {k: v for k, v in manifest.items() if k not in ("files", "data_dir")}  # written before file records
    assert store.check(key, old) == "has no file records (an older dpo_ray wrote it)"
