"""data_report.json: every dropped row counted by reason, with example row ids. Pure ring.

The counts are built in two steps so the driver never holds one entry per row: ``summarize_block``
runs in a Ray task on each block of per-row flags, ``merge_summaries`` adds the (few, small) block
summaries up in the driver, and ``build_data_report`` shapes the merged summary as the report.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Iterable

import pandas as pd

EXAMPLES_PER_REASON = 5
ERRORS_KEPT = 5
HASH_MOD = 2**128  # row hashes are 32 hex digits
DUPLICATE = "duplicate"  # the summaries' reason for a removed exact duplicate (not a malformed row)


def source_order(source: str) -> tuple[str, int]:
    """Sort key of a row's source (``file:line``, ``file:row N``): the file, then the number, so line 5
    comes before line 405 (as strings it would not, and "keep the first" would keep the later row)."""
    match = re.fullmatch(r"(.*?)(\d+)", source)
    return (match.group(1), int(match.group(2))) if match else (source, -1)


def summarize_block(flags: pd.DataFrame, duplicates: frozenset[str] = frozenset()) -> dict[str, Any]:
    """One block of flags (source, error, drop_reason, drop_detail, warning, is_eval, mixture, row_hash)
    -> counts, the first examples by source, and the order-free sum of the kept rows' hashes.
    Rows whose source is in ``duplicates`` (and not dropped for another reason) count as duplicates."""
    flags = flags.sort_values("source", kind="stable", key=lambda col: col.map(source_order))
    reasons = flags["drop_reason"].astype(str).copy()
    dup = (reasons == "") & flags["source"].isin(duplicates)
    reasons[dup] = DUPLICATE
    details = flags["drop_detail"].astype(str).where(~dup, flags["source"].astype(str) + ": duplicate pair")
    errors = flags["error"].astype(str) != ""
    kept = (reasons == "") & ~errors
    dropped = (reasons != "") & ~errors
    is_eval = flags["is_eval"].astype(bool)
    examples: dict[str, list[list[str]]] = {}
    for reason, group in flags[dropped].assign(_r=reasons[dropped], _d=details[dropped]).groupby("_r", sort=True):
        examples[str(reason)] = [[str(s), str(d)] for s, d in zip(group["source"].head(EXAMPLES_PER_REASON), group["_d"].head(EXAMPLES_PER_REASON))]
    return {
        "rows": int(len(flags) - errors.sum()),
        "dropped": {str(r): int(n) for r, n in reasons[dropped].value_counts().items()},
        "examples": examples,
        "warnings": {str(w): int(n) for w, n in flags.loc[flags["warning"] != "", "warning"].value_counts().items()},
        "train": int((kept & ~is_eval).sum()), "eval": int((kept & is_eval).sum()),
        "mixture": {str(int(m)): [int((~e).sum()), int(e.sum())] for m, e in is_eval[kept].groupby(flags["mixture"][kept])},
        "errors": [[str(s), str(e)] for s, e in zip(flags.loc[errors, "source"].head(ERRORS_KEPT), flags.loc[errors, "error"].head(ERRORS_KEPT))],
        "error_rows": int(errors.sum()),
        "hash_sum": str(hash_sum(flags.loc[kept, "row_hash"])),
    }


def hash_sum(row_hashes: Iterable[str]) -> int:
    """Order-free combination of row hashes: their sum modulo 2**128."""
    return sum(int(h, 16) for h in row_hashes) % HASH_MOD


def merge_summaries(parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Add block summaries up; examples stay the first ones by source, as if one block held every row."""
    total: dict[str, Any] = {"rows": 0, "train": 0, "eval": 0, "error_rows": 0, "hash_sum": 0}
    dropped: Counter[str] = Counter()
    warnings: Counter[str] = Counter()
    mixture: dict[str, list[int]] = {}
    examples: dict[str, list[list[str]]] = {}
    errors: list[list[str]] = []
    for part in parts:
        for k in ("rows", "train", "eval", "error_rows"):
            total[k] += part[k]
        total["hash_sum"] = (total["hash_sum"] + int(part["hash_sum"])) % HASH_MOD
        dropped.update(part["dropped"])
        warnings.update(part["warnings"])
        for m, (train, held_out) in part["mixture"].items():
            seen = mixture.setdefault(m, [0, 0])
            seen[0], seen[1] = seen[0] + train, seen[1] + held_out
        for reason, rows in part["examples"].items():
            examples[reason] = sorted(examples.get(reason, []) + rows, key=_by_source)[:EXAMPLES_PER_REASON]
        errors = sorted(errors + part["errors"], key=_by_source)[:ERRORS_KEPT]
    return {**total, "dropped": dict(dropped), "warnings": dict(warnings), "mixture": mixture,
            "examples": examples, "errors": errors}


def _by_source(example: list[str]) -> tuple[tuple[str, int], str]:
    return source_order(example[0]), example[1]


def build_data_report(summary: dict[str, Any], max_drop_fraction: float) -> dict[str, Any]:
    """The report from a merged summary (rows with a file-level error are not rows read).

    Exact duplicates are removed but are not malformed rows: they are reported apart
    (``duplicates_removed``) and do not count toward ``drop_fraction``."""
    rows = summary["rows"]
    duplicates = summary["dropped"].get(DUPLICATE, 0)
    reasons = sorted(r for r in summary["dropped"] if r != DUPLICATE)
    dropped = sum(summary["dropped"][r] for r in reasons)
    return {
        "rows_read": rows,
        "kept": rows - dropped - duplicates,
        "rows_dropped": dropped,
        "drop_fraction": dropped / rows if rows else 0.0,
        "max_drop_fraction": max_drop_fraction,
        "duplicates_removed": duplicates,
        "duplicate_examples": [s for s, _ in summary["examples"].get(DUPLICATE, [])],
        "train_pairs": summary["train"],
        "eval_pairs": summary["eval"],
        "dropped": {r: summary["dropped"][r] for r in reasons},
        "examples": {r: [s for s, _ in summary["examples"][r]] for r in reasons},
        "details": {r: [d for _, d in summary["examples"][r]] for r in reasons},
        "warnings": dict(sorted(summary["warnings"].items())),
    }
