"""data_report.json: every dropped row counted by reason, with example row ids. Pure ring."""

from __future__ import annotations

from typing import Any

import pandas as pd

EXAMPLES_PER_REASON = 5


def build_data_report(flags: pd.DataFrame, max_drop_fraction: float) -> dict[str, Any]:
    """flags: one row per input row with source, drop_reason ('' = kept), drop_detail, warning, is_eval."""
    dropped = flags[flags["drop_reason"] != ""]
    kept = flags[flags["drop_reason"] == ""]
    by_reason = dropped.groupby("drop_reason", sort=True)
    warnings = flags[flags["warning"] != ""].groupby("warning").size()
    rows = len(flags)
    return {
        "rows_read": rows,
        "kept": len(kept),
        "rows_dropped": len(dropped),
        "drop_fraction": len(dropped) / rows if rows else 0.0,
        "max_drop_fraction": max_drop_fraction,
        "train_pairs": int((~kept["is_eval"].astype(bool)).sum()),
        "eval_pairs": int(kept["is_eval"].astype(bool).sum()),
        "dropped": {str(r): int(len(g)) for r, g in by_reason},
        "examples": {str(r): list(g["source"].head(EXAMPLES_PER_REASON)) for r, g in by_reason},
        "details": {str(r): list(g["drop_detail"].head(EXAMPLES_PER_REASON)) for r, g in by_reason},
        "warnings": {str(w): int(n) for w, n in warnings.items()},
    }
