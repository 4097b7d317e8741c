"""Print cluster/runtime_env.yaml as JSON for `ray job submit --runtime-env-json`, plus secrets from this shell.

    ray job submit --address http://127.0.0.1:8265 --runtime-env-json "$(python cluster/runtime_env.py)" \\
        -- python pipelines/dpo.py --config cluster/dpo_cluster.yaml

Each variable of PASSED_THROUGH (HF_TOKEN, WANDB_API_KEY, ...) that is set in the environment is added
to the job's env_vars; nothing is written to disk on this side. Ray's job CLI takes --runtime-env
or --runtime-env-json, never both, and does not expand $VARS in the YAML: hence this helper.

Ray itself records a job's runtime env, env_vars included, in every node's session log
(runtime_env_agent.log) and returns it to `ray job list` (token holders only). For long-lived
secrets prefer the nodes' own environment: a Kubernetes Secret (cluster/kuberay/), or a secret
manager read in the launcher's start commands.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

DEFAULT_FILE = Path(__file__).with_name("runtime_env.yaml")
PASSED_THROUGH = ("HF_TOKEN", "WANDB_API_KEY", "MLFLOW_TRACKING_TOKEN")
"""Secrets taken from the submitting shell when set there."""


def build_runtime_env(path: Path, environ: Mapping[str, str], names: Sequence[str] = PASSED_THROUGH,
                      pip: bool = True) -> dict[str, Any]:
    """The runtime env in ``path`` with each of ``names`` set in ``environ`` added to env_vars.

    ``pip=False`` drops the pip packages (nodes that already have them, or a quick local test).
    Raises ValueError when the file itself sets one of ``names``: a secret must not live in a file.
    """
    env = yaml.safe_load(path.read_text())
    written = sorted(set(env.get("env_vars", {})) & set(names))
    if written:
        raise ValueError(f"{path} sets {', '.join(written)} in env_vars: secrets come from the environment, not from files")
    env_vars = dict(env.get("env_vars", {}))
    env_vars.update({name: environ[name] for name in names if environ.get(name)})
    env = {**env, "env_vars": env_vars}
    if not pip:
        env.pop("pip", None)
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE, help="runtime env YAML (default: %(default)s)")
    parser.add_argument("--pass", dest="extra", action="append", default=[], metavar="NAME",
                        help="also pass this environment variable through (repeatable)")
    parser.add_argument("--no-pip", action="store_true", help="leave out the pip packages (the nodes already have them)")
    args = parser.parse_args(argv)
    try:
        env = build_runtime_env(args.file, os.environ, [*PASSED_THROUGH, *args.extra], pip=not args.no_pip)
    except ValueError as err:
        print(f"runtime_env: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
