"""Where a run's outputs go: a local (or mounted) output_dir, or an object-store URI.

For ``output_dir=s3://...`` / ``gs://...`` (any URI pyarrow opens, ``file://`` included) the run
writes to a local staging folder and uploads it when the run ends, ``metrics.json`` last: a reader
that finds ``metrics.json`` finds a finished run. Ray Train writes its checkpoints to
``<output_dir>/ray`` itself, so workers on any node reach them. No Ray import here: ``write_outputs``
reads the result's checkpoint as a local folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from dpo_ray.config import Config, ConfigError
from dpo_ray.paths import atomic_write, is_remote, join
from dpo_ray.train.stopping import TrainingError

FINISHED_MARK = "metrics.json"


@contextmanager
def local_output(output_dir: str, overwrite: bool) -> Iterator[Path]:
    """The folder the run writes to: output_dir itself, or for a URI a staging folder that is
    uploaded when the block ends (whatever it holds, also after an error: the data report, the
    history) and then removed. A finished run there is refused unless ``overwrite``."""
    if not is_remote(output_dir):
        refuse_finished_run(Path(output_dir), overwrite)
        yield Path(output_dir)
        return
    fs, base = _open(output_dir)
    if fs.get_file_info(f"{base}/{FINISHED_MARK}").type == pafs.FileType.File and not overwrite:
        raise ConfigError(f"output_dir {output_dir} already holds a finished run ({FINISHED_MARK}); "
                          "choose another output_dir or set overwrite_output_dir=true")
    stage = Path(tempfile.mkdtemp(prefix="dpo_ray-output-"))
    try:
        yield stage
    finally:
        upload(stage, output_dir)
        shutil.rmtree(stage, ignore_errors=True)


def refuse_finished_run(out: Path, overwrite: bool) -> None:
    """A local output_dir that holds a finished run (model/) is kept unless ``overwrite``."""
    if (out / "model").exists() and not overwrite:
        raise ConfigError(f"output_dir {out} already holds a finished run (model/); "
                          "choose another output_dir or set overwrite_output_dir=true")


def upload(stage: Path, output_dir: str) -> None:
    """Copy the staging folder to the URI: other files first, then model/, then metrics.json."""
    fs, base = _open(output_dir)
    if fs.get_file_info(f"{base}/{FINISHED_MARK}").type == pafs.FileType.File:
        fs.delete_file(f"{base}/{FINISHED_MARK}")  # an overwritten run is not finished until the new mark
    files = [p for p in stage.rglob("*") if p.is_file()]
    order = sorted(files, key=lambda p: (p.name == FINISHED_MARK and p.parent == stage, p.relative_to(stage).parts[0] == "model", str(p)))
    for path in order:
        target = f"{base.rstrip('/')}/{path.relative_to(stage).as_posix()}"
        fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        with path.open("rb") as src, fs.open_output_stream(target) as dst:
            shutil.copyfileobj(src, dst, length=8 * 2**20)


def _open(uri: str) -> tuple[pafs.FileSystem, str]:
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as err:  # pyarrow: unknown scheme, no credentials, bad bucket name
        raise ConfigError(f"output_dir {uri}: cannot open it ({err}); use a local path, a mounted share, s3:// or gs://") from err


def write_outputs(cfg: Config, out: Path, result: Any, run_stats: dict[str, Any]) -> dict[str, Any]:
    """model/ (moved in last, atomically, with its model card README.md), metrics.json,
    metrics_history.jsonl (config.yaml is written before training)."""
    # matplotlib loads here, where curves are drawn: the entry scripts' preflight imports this module.
    from dpo_ray.model_card import model_card
    from dpo_ray.plots import plot_curves, write_tensorboard

    out.mkdir(parents=True, exist_ok=True)
    with result.checkpoint.as_directory() as ckpt:
        history = json.loads(Path(ckpt, "history.json").read_text())
        atomic_write(out / "metrics_history.jsonl", "".join(json.dumps(row) + "\n" for row in history))
        if result.metrics.get("stop_reason") == "non_finite":
            raise TrainingError(
                f"training stopped at step {result.metrics['train/steps']:.0f}: the loss or gradient norm is not finite "
                f"(lower train.learning_rate, or set train.nonfinite=skip); no model was written, history in {out / 'metrics_history.jsonl'}"
            )
        staged = out / ".model.partial"
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(Path(ckpt, "model"), staged)
    initial = {f"initial_{k}": v for k, v in history[0].items() if k.startswith("eval/")}
    final = {k: v for k, v in result.metrics.items() if k != "step"}
    summary: dict[str, Any] = {**run_stats, **initial, **final, "model_dir": join(cfg.output_dir, "model")}
    if "perf/first_step_time" in final:  # step 1 ran in this job (not before a resume)
        summary["perf/job_seconds_to_first_step"] = final["perf/first_step_time"] - run_stats["perf/started_time"]
    atomic_write(staged / "README.md", model_card(cfg, summary))  # PEFT's adapter card, if any, replaced
    plot_curves(history, out / "curves.png")
    shutil.rmtree(out / "tensorboard", ignore_errors=True)  # the live events; rewritten whole, each step once
    if "tensorboard" in cfg.train.report_to:
        write_tensorboard(history, out / "tensorboard")
    atomic_write(out / "metrics.json", json.dumps(summary, indent=2, sort_keys=True))
    previous = out / ".model.previous"
    if (out / "model").exists():
        os.replace(out / "model", previous)
    os.replace(staged, out / "model")
    shutil.rmtree(previous, ignore_errors=True)
    return summary
