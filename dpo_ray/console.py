"""Ray started quietly on the driver (orchestration ring; progress lines: tracking.py and screen.py).

By default Ray's own output stays in its session folder (``<temp dir>/<session>/logs``; the summary
names it): the workers' and actors' stdout/stderr are not streamed to the driver
(``ray.init(log_to_driver=False)``), and the console handlers of the driver's ``ray`` and
``ray.data`` loggers show errors only, while their records still go to files there (Ray Data's own
``ray-data/ray-data.log``, and ``dpo_ray-driver-<pid>.log`` for the rest). Ray Data's progress bars
are off. ``--verbose`` on the entry scripts, or ``DPO_RAY_VERBOSE=1``, brings Ray's normal output
back (Ray Data's bars where stderr is a terminal). Progress lines come from the driver in both modes
(dpo_ray/screen.py).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import ray
import ray.data

from dpo_ray.screen import VERBOSE_ENV, verbose

DRIVER_LOG = "dpo_ray-driver-{pid}.log"


def start_ray() -> str:
    """ray.init() (joins RAY_ADDRESS or a running cluster, else starts a local Ray) unless Ray is up,
    with the quiet or verbose settings; returns Ray's session log folder on this node."""
    loud = verbose()
    if not ray.is_initialized():
        if not (sys.stdout.isatty() and sys.stderr.isatty()):
            # No ANSI colour in a log file, on the worker lines (--verbose) and on the raylet's messages
            # (an OOM kill, say), which Ray prints on the driver in both modes. Read at print time.
            os.environ.setdefault("RAY_COLOR_PREFIX", "0")
        if not loud:
            _console_errors_only()  # before init: its token-auth notice is a warning
        ray.init(**({} if loud else {"log_to_driver": False}))
        if not loud:
            _keep_driver_log()
        resources = ray.cluster_resources()
        print(f"ray: {resources.get('CPU', 0):.0f} CPUs, {resources.get('GPU', 0):.0f} GPUs; Ray's logs: {session_log_dir()}"
              + ("" if loud else f" (--verbose or {VERBOSE_ENV}=1 shows them here)"), flush=True)
    # Ray Data's bars redraw several lines in a terminal and flood a log file or `ray job logs`.
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = loud and sys.stderr.isatty()
    # A failed map call raises its own exception (a RayTaskError of its type), not Ray Data's UserCodeException
    # that keeps only its text: the reference stage turns a packing refusal into one line (reference/stage.py).
    context.raise_original_map_exception = True
    return session_log_dir()


def session_log_dir() -> str:
    """Ray's log folder for this session on the driver's node (each node has its own)."""
    context = ray.get_runtime_context()
    return os.path.join(context.get_temp_dir(), context.get_session_name(), "logs")


def _console_handlers(name: str) -> list[logging.Handler]:
    """The handlers of logger ``name`` that write to the terminal (Ray's PlainRayHandler is a
    StreamHandler; Ray's file handlers are not, or are FileHandlers)."""
    return [h for h in logging.getLogger(name).handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]


def _console_errors_only() -> None:
    for name in ("ray", "ray.data"):  # ray.data does not propagate to ray: it has its own console handler
        for handler in _console_handlers(name):
            handler.setLevel(logging.ERROR)


def _keep_driver_log() -> None:
    """Records of the driver's ``ray`` logger (Ray Core, Train, Tune on the driver) go to a file in
    the session log folder, as the workers' logs do."""
    logger = logging.getLogger("ray")
    path = Path(session_log_dir(), DRIVER_LOG.format(pid=os.getpid()))
    if any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path for h in logger.handlers):
        return
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s\t%(levelname)s %(name)s %(filename)s:%(lineno)s -- %(message)s"))
    logger.addHandler(handler)
