"""Read an offline W&B run from disk (WANDB_MODE=offline): its records, history by step, run metadata.

The run file (<dir>/wandb/offline-run-*/run-<id>.wandb) is a LevelDB-style log: a 7-byte header
(":W&B", magic, version), then 32 KiB blocks of records, each a 7-byte header (CRC-32, length, type:
1 full, 2 first, 3 middle, 4 last) and a chunk of a wandb_internal_pb2.Record.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BLOCK = 32768


def records(path: Path) -> Iterator[Any]:
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a W&B run file"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending, pos = pending + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            yield Record.FromString(pending)
            pending = b""
        elif kind == 0:
            pending = b""


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def read_run(run_dir: Path, wait_for_exit: float = 0.0) -> dict[str, Any]:
    """{"history": {step: {key: value}}, "summary": {...}, "config": {...}, "group", "name", "exit_code"}.

    ``wait_for_exit``: seconds to wait for the exit record. A run finished in this process may write
    it after run.finish() returns (seen with wandb 0.31 for a second run in one process)."""
    deadline = time.monotonic() + wait_for_exit
    while True:
        out = _read(run_dir)
        if out["exit_code"] is not None or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def _read(run_dir: Path) -> dict[str, Any]:
    (path,) = run_dir.glob("run-*.wandb")
    out: dict[str, Any] = {"history": {}, "summary": {}, "config": {}, "exit_code": None}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {_key(i): json.loads(i.value_json) for i in record.history.item}
            out["history"].setdefault(int(record.history.step.num), {}).update(row)
        elif kind == "summary":
            out["summary"].update({_key(u): json.loads(u.value_json) for u in record.summary.update})
        elif kind == "run":
            out["config"] = {u.key: json.loads(u.value_json) for u in record.run.config.update if u.key != "_wandb"}
            out["group"], out["name"] = record.run.run_group, record.run.display_name
        elif kind == "exit":
            out["exit_code"] = record.exit.exit_code
    return out


def offline_runs(output_dir: Path) -> list[Path]:
    return sorted((output_dir / "wandb").glob("offline-run-*"))
