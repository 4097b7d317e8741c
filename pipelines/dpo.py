"""Run a DPO job: python pipelines/dpo.py [--config FILE] [key=value ...].

Also runs as `ray job submit -- python pipelines/dpo.py ...`; with no cluster it starts a local Ray.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dpo_ray.config import Config, ConfigError
from dpo_ray.config_load import load_config
from dpo_ray.config_help import format_help, sections
from dpo_ray.data.parse import DataError
from dpo_ray.preflight import preflight
from dpo_ray.screen import VERBOSE_HELP, set_verbose
from dpo_ray.train.stopping import RunInterrupted, TrainingError
from dpo_ray.summary import format_summary

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "quickstart.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=format_help(sections(Config)),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config (default: the quickstart)")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. loss.beta=0.05 train.max_steps=20")
    args = parser.parse_args(argv)
    set_verbose(args.verbose)  # read where Ray starts (console.start_ray)
    try:
        cfg = load_config(args.config, args.overrides)
        preflight(cfg)  # model, data and output paths, in a second: before Ray and torch load
        from dpo_ray.run import run  # Ray and torch load only for a valid config

        summary = run(cfg)
    except (ConfigError, DataError, TrainingError) as err:
        print(f"dpo_ray: error: {err}", file=sys.stderr)
        return 2
    except RunInterrupted as err:
        import ray  # loaded by now; its shutdown lines come before ours, so ours is the last line

        ray.shutdown()
        print(f"dpo_ray: {err}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("dpo_ray: interrupted before training; no model was written", file=sys.stderr)
        return 130
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
