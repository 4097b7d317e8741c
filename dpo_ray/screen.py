"""What a run shows on screen: the verbosity switch, and the progress, one line per logging step and
one per evaluation, printed by the driver.

Pure ring (no Ray): the entry scripts set the switch before Ray loads. Ray Train hands every report
to a callback in its controller process (tracking.ProgressReports), which runs on the driver's node;
the callback turns reports into lines (``ProgressLines``) and appends them to a file in the local
output folder, and the driver prints them as they come (``follow``): one live bar line when stderr is
a terminal, plain lines otherwise (a log file, `ray job logs`). So each line is printed once, by the
driver, whatever Ray does with the workers' own output.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

BAR_WIDTH = 20
POLL_SECONDS = 0.2
VERBOSE_ENV = "DPO_RAY_VERBOSE"
VERBOSE_HELP = ("also show Ray's own output (the workers' and actors' logs, Ray Data's and Ray Train's "
                "messages) instead of leaving it in Ray's session folder; same as DPO_RAY_VERBOSE=1")


def verbose() -> bool:
    """DPO_RAY_VERBOSE=1 (the entry scripts' --verbose sets it): Ray's own output on the screen too."""
    return os.environ.get(VERBOSE_ENV, "0") not in ("", "0")


def set_verbose(flag: bool) -> None:
    """An entry script's --verbose; without it, a DPO_RAY_VERBOSE the user set stays as it is."""
    if flag:
        os.environ[VERBOSE_ENV] = "1"


class ProgressLines:
    """Report rows -> progress lines ({"kind": "train" | "eval", "step", "total", "text"}).

    pairs/s is the wall-clock rate since the previous train line, ETA the wall time per step since the
    first report (step 0's eval, or the first step after a resume) times the steps left: both count
    evaluations and reports, as a user waiting does."""

    def __init__(self, total_steps: int, batch_size: int) -> None:
        self.total, self.batch_size = total_steps, batch_size
        self._first: tuple[int, float] | None = None  # (step, time) of the first report
        self._last: tuple[int, float] | None = None  # of the last train line

    def lines(self, row: dict[str, Any], now: float) -> list[dict[str, Any]]:
        step = int(row["step"])
        if self._first is None or self._last is None or step < self._last[0]:
            # the first report, or a restarted worker group replaying from its checkpoint: no rate yet
            self._first = self._last = (step, now)
        out = []
        if "train/loss" in row:
            (first_step, first_time), (last_step, last_time) = self._first, self._last
            timing = ""
            if step > last_step and now > last_time:
                rate = (step - last_step) * self.batch_size / (now - last_time)
                eta = (now - first_time) / (step - first_step) * (self.total - step)
                timing = f" {rate:.1f} pairs/s ETA {eta:.0f}s"
            out.append(self._line("train", step, f"[dpo_ray] step {step}/{self.total} " + _metrics(row, "train/") + timing))
            self._last = (step, now)
        if "eval/loss" in row:
            out.append(self._line("eval", step, f"[dpo_ray] eval at step {step}/{self.total} " + _metrics(row, "eval/")))
        return out

    def _line(self, kind: str, step: int, text: str) -> dict[str, Any]:
        return {"kind": kind, "step": step, "total": self.total, "text": text}


def _metrics(row: dict[str, Any], prefix: str) -> str:
    return (f"loss {row[prefix + 'loss']:.4f} acc {row[prefix + 'rewards/accuracies']:.3f} "
            f"margin {row[prefix + 'rewards/margins']:.4f}")


def append_lines(path: str, lines: list[dict[str, Any]]) -> None:
    """Append whole lines, flushed (the driver reads only lines that end in a newline)."""
    if lines:
        with open(path, "a") as f:
            f.write("".join(json.dumps(line) + "\n" for line in lines))


class Renderer:
    """Writes progress lines to ``stream``: plain lines, or (``live``) one bar line rewritten in place
    for train lines, with eval lines printed above it."""

    def __init__(self, stream: TextIO, live: bool) -> None:
        self.stream, self.live = stream, live
        self._bar = ""  # the live line on screen now

    def show(self, line: dict[str, Any]) -> None:
        if not self.live:
            self.stream.write(line["text"] + "\n")
        elif line["kind"] == "train":
            done = BAR_WIDTH * line["step"] // max(line["total"], 1)
            self._bar = line["text"].replace(" loss ", f" [{'#' * done}{'.' * (BAR_WIDTH - done)}] loss ", 1)
            self.stream.write("\r\x1b[K" + self._bar)
        else:
            self.stream.write("\r\x1b[K" + line["text"] + "\n" + self._bar)
        self.stream.flush()

    def close(self) -> None:
        if self.live and self._bar:
            self.stream.write("\n")
            self.stream.flush()
        self._bar = ""


@contextmanager
def follow(path: str, stream: TextIO, live: bool,
           on_metrics: Callable[[dict[str, Any]], None] | None = None) -> Iterator[None]:
    """Print the lines appended to ``path`` while the block runs (a thread polls it), then the rest.
    ``path`` starts empty. Lines of kind "metrics" (a report's values, for W&B) go to ``on_metrics``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("")
    renderer, stop = Renderer(stream, live), threading.Event()
    offset = 0

    def drain() -> None:
        nonlocal offset
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits for the next poll
        offset += len(complete)
        for raw in complete.splitlines():
            line = json.loads(raw)
            if line["kind"] != "metrics":
                renderer.show(line)
            elif on_metrics is not None:
                on_metrics(line)

    def poll() -> None:
        while not stop.wait(POLL_SECONDS):
            drain()

    thread = threading.Thread(target=poll, name="dpo_ray-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        drain()
        renderer.close()
        os.remove(path)
