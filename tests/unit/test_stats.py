"""The stage statistics flatten into the metric names and values runs reported before they were typed."""

from __future__ import annotations

from dpo_ray.stats import DataStats, RefStats, StageStats

COUNTS = {"data/rows_read": 12, "data/rows_dropped": 2, "data/train_pairs": 8, "data/eval_pairs": 2, "data/duplicates_removed": 1}


def test_scored_skipped_and_reused_stats_flatten_to_the_run_metrics() -> None:
    data = DataStats(COUNTS, tokenize_cache_hit=False)
    scored = StageStats(data, RefStats(skipped=False, cache_hit=False, seconds=3.5, pad_fraction=0.25, key="abc"), 9)
    assert scored.metrics() == {**COUNTS, "data/tokenize_cache_hit": 0.0, "ref/skipped": 0.0, "ref/cache_hit": 0.0,
                                "ref/seconds": 3.5, "ref/pad_fraction": 0.25, "ref/key": "abc", "data/epoch_train_pairs": 9}
    assert (data.train_pairs, data.eval_pairs) == (8, 2)
    # A sweep trial on the shared datasets: nothing tokenized or scored, the reference read.
    assert scored.reused().metrics() == {**scored.metrics(), "data/tokenize_cache_hit": 1.0, "ref/cache_hit": 1.0, "ref/seconds": 0.0}

    skipped = StageStats(data, RefStats(skipped=True, cache_hit=False, seconds=0.0), 8)  # a reference-free loss
    assert skipped.metrics() == {**COUNTS, "data/tokenize_cache_hit": 0.0, "ref/skipped": 1.0, "ref/cache_hit": 0.0,
                                 "ref/seconds": 0.0, "data/epoch_train_pairs": 8}
    assert skipped.reused().metrics()["ref/cache_hit"] == 0.0  # nothing to read
