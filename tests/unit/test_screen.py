"""Progress lines: what the driver prints per report, as plain lines or one live bar (no Ray)."""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path

import pytest

from dpo_ray.screen import VERBOSE_ENV, ProgressLines, Renderer, append_lines, follow, set_verbose, verbose


def _row(step: int, train: bool = True, evaluated: bool = False) -> dict[str, float]:
    row = {"step": float(step)}
    if train:
        row.update({"train/loss": 0.5, "train/rewards/accuracies": 0.75, "train/rewards/margins": 0.25})
    if evaluated:
        row.update({"eval/loss": 0.4, "eval/rewards/accuracies": 1.0, "eval/rewards/margins": 0.5})
    return row


def test_lines_rate_and_eta_by_hand() -> None:
    lines = ProgressLines(total_steps=100, batch_size=32)
    assert [x["text"] for x in lines.lines(_row(0, train=False, evaluated=True), now=100.0)] == [
        "[dpo_ray] eval at step 0/100 loss 0.4000 acc 1.000 margin 0.5000"]
    # 10 steps x 32 pairs in 2 s: 160 pairs/s; 0.2 s a step since step 0, 90 steps left: ETA 18 s
    (first,) = lines.lines(_row(10), now=102.0)
    assert first == {"kind": "train", "step": 10, "total": 100,
                     "text": "[dpo_ray] step 10/100 loss 0.5000 acc 0.750 margin 0.2500 160.0 pairs/s ETA 18s"}
    # an eval in between does not move the rate's baseline: 10 steps in 4 s (80 pairs/s); 0.3 s a step, 80 left
    assert [x["kind"] for x in lines.lines(_row(15, train=False, evaluated=True), now=104.0)] == ["eval"]
    train, evaluation = lines.lines(_row(20, evaluated=True), now=106.0)
    assert train["text"].endswith(" 80.0 pairs/s ETA 24s") and evaluation["kind"] == "eval"


def test_a_replayed_step_after_a_restart_has_no_rate() -> None:
    lines = ProgressLines(total_steps=40, batch_size=8)
    lines.lines(_row(0, train=False, evaluated=True), now=0.0)
    lines.lines(_row(10), now=1.0)
    lines.lines(_row(20), now=2.0)
    (replayed,) = lines.lines(_row(10), now=9.0)  # a restarted worker group, from a step-10 checkpoint
    assert replayed["text"] == "[dpo_ray] step 10/40 loss 0.5000 acc 0.750 margin 0.2500"
    (after,) = lines.lines(_row(20), now=10.0)
    assert after["text"].endswith(" 80.0 pairs/s ETA 2s")  # 1 s for 10 steps since the replay, 20 left


def _lines() -> list[dict[str, object]]:
    return [{"kind": "train", "step": 5, "total": 10, "text": "[dpo_ray] step 5/10 loss 0.1"},
            {"kind": "eval", "step": 5, "total": 10, "text": "[dpo_ray] eval at step 5/10 loss 0.2"},
            {"kind": "train", "step": 10, "total": 10, "text": "[dpo_ray] step 10/10 loss 0.3"}]


def test_plain_lines_once_each() -> None:
    stream = io.StringIO()
    renderer = Renderer(stream, live=False)
    for line in _lines():
        renderer.show(line)
    renderer.close()
    assert stream.getvalue() == ("[dpo_ray] step 5/10 loss 0.1\n[dpo_ray] eval at step 5/10 loss 0.2\n"
                                 "[dpo_ray] step 10/10 loss 0.3\n")


def test_live_bar_rewrites_one_line_and_keeps_evals_above_it() -> None:
    stream = io.StringIO()
    renderer = Renderer(stream, live=True)
    for line in _lines():
        renderer.show(line)
    renderer.close()
    half = "[dpo_ray] step 5/10 [##########..........] loss 0.1"
    assert stream.getvalue() == (
        f"\r\x1b[K{half}"
        f"\r\x1b[K[dpo_ray] eval at step 5/10 loss 0.2\n{half}"
        "\r\x1b[K[dpo_ray] step 10/10 [####################] loss 0.3\n")


def test_follow_prints_lines_as_they_are_appended(tmp_path: Path) -> None:
    channel, stream = str(tmp_path / "channel.jsonl"), io.StringIO()
    with follow(channel, stream, live=False):
        def writer() -> None:
            for line in _lines():
                append_lines(channel, [line])
                time.sleep(0.05)

        thread = threading.Thread(target=writer)
        thread.start()
        thread.join()
        deadline = time.time() + 5
        while stream.getvalue().count("\n") < 2 and time.time() < deadline:  # the poll prints while the block runs
            time.sleep(0.05)
        assert stream.getvalue().count("\n") >= 2
    assert stream.getvalue().splitlines() == [line["text"] for line in _lines()]
    assert not os.path.exists(channel)


def test_verbose_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    assert not verbose()
    set_verbose(False)
    assert not verbose()
    set_verbose(True)
    assert verbose() and os.environ[VERBOSE_ENV] == "1"
    monkeypatch.setenv(VERBOSE_ENV, "0")
    assert not verbose()
