"""Local Ray nodes for tests: `ray start --block` on 127.0.0.1, each in its own process group and temp
dir, token authentication on, always stopped (also when the test fails).

Used by tests/e2e/test_multinode.py; the same pattern as tests/e2e/test_e2e.py's ray_head fixture.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_env() -> dict[str, str]:
    """This process's environment for Ray CLI calls: no inherited RAY_ADDRESS, token auth on
    (with Ray 2.60 token auth every node, driver and `ray job` call needs RAY_AUTH_MODE=token)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONUNBUFFERED"] = "1"
    env["RAY_AUTH_MODE"] = "token"
    return env


@dataclass
class LocalCluster:
    address: str
    """Job API / dashboard, e.g. http://127.0.0.1:8265."""
    gcs_address: str
    dashboard_port: int
    env: dict[str, str]
    temp_dirs: list[str] = field(default_factory=list)

    def ray(self, *args: str, timeout: int = 120, env: dict[str, str] | None = None,
            cwd: str | Path | None = None) -> subprocess.CompletedProcess[str]:
        """`ray <command> <subcommand> --address <this cluster> <rest>` (``ray job ...``, ``ray list ...``)."""
        cmd = ["ray", *args[:2], "--address", self.address, *args[2:]]
        return subprocess.run(cmd, env=env or self.env, capture_output=True, text=True, timeout=timeout, cwd=cwd)

    def alive_nodes(self) -> list[dict]:
        proc = self.ray("list", "nodes", "--format", "json")
        if proc.returncode != 0 or not proc.stdout.lstrip().startswith("["):  # not up yet: an error, or "No resource ..."
            return []
        return [n for n in json.loads(proc.stdout) if n["state"] == "ALIVE"]


def _start(args: list[str], temp_dir: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = open(Path(temp_dir) / "node.log", "wb")
    try:
        return subprocess.Popen(["ray", "start", "--block", f"--temp-dir={temp_dir}", *args], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()  # the child holds its own descriptor


def _stop(proc: subprocess.Popen[bytes], temp_dir: str) -> None:
    """SIGTERM to `ray start --block` stops what it started (1-2 s, no drain: see local_cluster); if it does not
    exit, SIGTERM then SIGKILL its process group; last, kill by pid anything still running from this
    node's temp dir (a Ray process that left the group)."""
    start, how = time.monotonic(), "SIGTERM"
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
                how += f", group {sig.name}"
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(timeout=wait)
                    break
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue
    for p in psutil.process_iter(["pid", "cmdline"]):
        if any(temp_dir in part for part in p.info["cmdline"] or []):
            how += f", SIGKILL {p.pid}"
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
    print(f"ray node {temp_dir} stopped in {time.monotonic() - start:.1f} s ({how})", flush=True)  # shown with -s / -rA


def _log_tail(temp_dir: str) -> str:
    return (Path(temp_dir) / "node.log").read_text(errors="replace")[-2000:]


@contextmanager
def local_cluster(node_resources: list[dict[str, int]], num_cpus: int = 1, timeout: float = 120) -> Iterator[LocalCluster]:
    """A head plus ``len(node_resources) - 1`` more nodes on this machine, one custom-resource dict per
    node (the head first), ``num_cpus`` each. Stopped in reverse order on exit, whatever happened."""
    env = ray_env()
    port, dash = free_port(), free_port()
    cluster = LocalCluster(address=f"http://127.0.0.1:{dash}", gcs_address=f"127.0.0.1:{port}", dashboard_port=dash, env=env)
    with ExitStack() as stack:
        for i, resources in enumerate(node_resources):
            # short: Ray's socket paths have a length limit; one temp dir per node (Ray allows it per node)
            temp_dir = tempfile.mkdtemp(prefix="dpm-", dir="/tmp")
            cluster.temp_dirs.append(temp_dir)
            stack.callback(shutil.rmtree, temp_dir, ignore_errors=True)
            common = ["--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}", f"--resources={json.dumps(resources)}"]
            if i == 0:
                args = ["--head", f"--port={port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                        "--include-dashboard=true", *common]
            else:
                args = [f"--address={cluster.gcs_address}", *common]
            # No SIGTERM drain: it waits up to 30 s for leases that jobs' detached actors (Ray Data's
            # stats actor) never return; Ray then stops its processes at once.
            proc = _start(args, temp_dir, {**env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"})
            stack.callback(_stop, proc, temp_dir)
            deadline = time.time() + timeout
            while len(cluster.alive_nodes()) < i + 1:
                assert proc.poll() is None, f"ray node {i} exited:\n{_log_tail(temp_dir)}"
                assert time.time() < deadline, f"ray node {i} not up after {timeout} s:\n{_log_tail(temp_dir)}"
                time.sleep(1)
        yield cluster
