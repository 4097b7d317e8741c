"""Live run tracking: Ray Train callbacks that see each report as it happens (orchestration ring):
LiveTracking (the sinks below) and ProgressReports (the driver's progress lines).

``train.report_to`` picks the sinks, as TRL's ``report_to`` does:
- ``tensorboard`` (default): event files under ``<output_dir>/tensorboard`` while the run goes; at the
  end outputs.write_outputs rewrites them from the whole history (a resumed or restarted run then
  shows each step once).
- ``mlflow``: one MLflow run per dpo_ray run, at ``MLFLOW_TRACKING_URI`` (MLflow's default when
  unset) in experiment ``MLFLOW_EXPERIMENT_NAME`` (default ``dpo_ray``): the config as params, every
  report's metrics at its step, the summary at the end, and the status (FINISHED, or FAILED when
  training raised or stopped on a non-finite loss). The driver creates and ends the run; the callback,
  which Ray Train runs in its controller process, only logs metrics to it.
- ``wandb``: one W&B run per dpo_ray run (WANDB_PROJECT, default ``dpo_ray``; WANDB_ENTITY,
  WANDB_MODE and the API key are read by wandb from the environment, never by dpo_ray): the config,
  every report's metrics at its step while it trains, the summary, the curves image, and the exit
  code (0 finished, 1 failed). A sweep's trials share one group. The run lives in the driver: a W&B run
  belongs to the process that started it, and only the driver is there before training (the config)
  and after it (summary, image, status); the controller's callback (ProgressReports) forwards each
  report's values to it through the progress channel, the file the driver already follows.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ray.train import UserCallback

from dpo_ray.config import Config
from dpo_ray.paths import atomic_write
from dpo_ray.screen import ProgressLines, append_lines, verbose


@dataclass(frozen=True)
class MlflowRun:
    tracking_uri: str | None
    run_id: str


def is_number(value: Any) -> bool:
    """A metric value a tracker or Tune can take (bools and strings are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if is_number(v) and k != "step"}


def start_mlflow(cfg: Config, run_name: str) -> MlflowRun | None:
    """Create the MLflow run (config flattened as params) when train.report_to has mlflow."""
    if "mlflow" not in cfg.train.report_to:
        return None
    from mlflow.tracking import MlflowClient

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    client = MlflowClient(uri)
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "dpo_ray")
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
    run = client.create_run(experiment_id, run_name=run_name, tags={"output_dir": cfg.output_dir})
    from mlflow.entities import Param

    params = [Param(k, str(v)[:6000]) for k, v in _flatten(cfg.to_dict()).items()]
    for i in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
        client.log_batch(run.info.run_id, params=params[i:i + 100])
    return MlflowRun(uri, run.info.run_id)


def finish_mlflow(run: MlflowRun | None, summary: dict[str, Any] | None, failed: bool) -> None:
    """Log the summary (when there is one) and end the run."""
    if run is None:
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(run.tracking_uri)
    if summary:
        step = int(summary.get("train/steps", 0))
        _log_metrics(client, run.run_id, {f"final/{k}": v for k, v in numeric(summary).items()}, step)
    client.set_terminated(run.run_id, "FAILED" if failed else "FINISHED")


def start_wandb(cfg: Config, run_name: str, out: Path, group: str | None) -> Any | None:
    """Start the W&B run (files under <output_dir>/wandb) when train.report_to has wandb."""
    if "wandb" not in cfg.train.report_to:
        return None
    import wandb

    return wandb.init(project=os.environ.get("WANDB_PROJECT", "dpo_ray"), name=run_name, config=cfg.to_dict(),
                      group=group, dir=str(out), reinit="create_new",
                      settings=wandb.Settings(quiet=not verbose()))  # its run link stays; no sparkline table at the end


def wandb_logger(run: Any) -> Callable[[dict[str, Any]], None]:
    """A forwarded report (a "metrics" line of the progress channel) -> run.log at its step."""
    def log(line: dict[str, Any]) -> None:
        run.log(line["values"], step=int(line["step"]))

    return log


def finish_wandb(run: Any | None, summary: dict[str, Any] | None, curves: Path | None, failed: bool) -> None:
    """The summary and the curves image (when the run got that far), then the exit code."""
    if run is None:
        return
    if summary:
        import wandb

        run.summary.update({f"final/{k}": v for k, v in numeric(summary).items()})
        if curves is not None and curves.is_file():
            run.log({"curves": wandb.Image(str(curves))}, step=int(summary.get("train/steps", 0)))
    run.finish(exit_code=1 if failed else 0)


PROGRESS_FILE = "progress.json"
"""<output_dir>/progress.json: the last step a report reached ({"step": N}); an interrupted run names it."""


def read_progress(output_dir: str | Path) -> int:
    """The last reported step (0 before the first report)."""
    path = Path(output_dir, PROGRESS_FILE)
    return int(json.loads(path.read_text())["step"]) if path.is_file() else 0


class LiveTracking(UserCallback):
    """Writes each report's metrics as it arrives: TensorBoard scalars, MLflow metrics, and the step
    reached to progress.json. Ray Train runs it in its controller, on the driver's node, so the
    driver reads that file (a local output_dir, or the staging folder of a URI one)."""

    def __init__(self, output_dir: str, tensorboard: bool, mlflow_run: MlflowRun | None) -> None:
        self.progress_path = Path(output_dir, PROGRESS_FILE)
        self.tensorboard_dir = str(Path(output_dir, "tensorboard")) if tensorboard else None
        self.mlflow_run = mlflow_run
        self._writer: Any = None
        self._client: Any = None

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        row = metrics[0]  # rank 0's; every rank reports the same all-reduced values
        if "step" not in row:  # the final report: the summary, not a step
            self._close()
            return
        step, values = int(row["step"]), numeric(row)
        self.progress_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.progress_path, json.dumps({"step": step}))  # a reader never sees half a file
        if self.tensorboard_dir:
            # tensorboardX's SummaryWriter queues events for a thread (flush() does not drain it); the
            # record writer underneath writes synchronously, so `tensorboard --logdir` sees this step now.
            from tensorboardX.event_file_writer import EventsWriter
            from tensorboardX.proto.event_pb2 import Event
            from tensorboardX.summary import scalar

            if self._writer is None:
                os.makedirs(self.tensorboard_dir, exist_ok=True)
                self._writer = EventsWriter(os.path.join(self.tensorboard_dir, "events"))
            for name, value in values.items():
                self._writer.write_event(Event(wall_time=time.time(), step=step, summary=scalar(name, value)))
            self._writer.flush()
        if self.mlflow_run:
            if self._client is None:
                from mlflow.tracking import MlflowClient

                self._client = MlflowClient(self.mlflow_run.tracking_uri)
            _log_metrics(self._client, self.mlflow_run.run_id, values, step)

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _log_metrics(client: Any, run_id: str, values: dict[str, float], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(_mlflow_name(k), v, now, step) for k, v in values.items()]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])


def _mlflow_name(name: str) -> str:
    """MLflow metric names allow letters, digits, _ - . space : and /; others become _."""
    return "".join(c if c.isalnum() or c in "_-. :/" else "_" for c in name)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


PROGRESS_CHANNEL = ".progress_lines.jsonl"
"""In the local output folder: lines from the callback in Ray Train's controller to the driver."""


def progress_channel(out: Path) -> str:
    return str(out / PROGRESS_CHANNEL)


class ProgressReports(UserCallback):
    """Ray Train callback: each report -> progress lines appended to the channel file, which the
    driver prints (screen.follow). Ray Train runs callbacks in its controller, which it places on
    the driver's node, so the file in the (local, or staging) output folder is the driver's too."""

    def __init__(self, channel: str, total_steps: int, batch_size: int, forward_metrics: bool = False) -> None:
        self.channel, self.forward_metrics = channel, forward_metrics
        self.lines = ProgressLines(total_steps, batch_size)

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        row = metrics[0]  # rank 0's; every rank reports the same all-reduced values
        if "step" in row:  # not the final report (the summary)
            values = ([{"kind": "metrics", "step": int(row["step"]), "values": numeric(row)}]
                      if self.forward_metrics else [])  # for the driver's W&B run
            append_lines(self.channel, values + self.lines.lines(row, time.time()))
