"""Sweep a DPO job with Ray Tune: python pipelines/sweep.py [--config FILE] [key=value ...].

Also runs as `ray job submit -- python pipelines/sweep.py ...`. The reference stage runs once before
the first trial; every trial reuses its cache. `--resume <sweep output_dir>` continues a stopped
sweep: finished trials are not rerun.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dpo_ray.config import Config, ConfigError
from dpo_ray.config_help import format_help, sections
from dpo_ray.data.parse import DataError
from dpo_ray.preflight import preflight_sweep
from dpo_ray.screen import VERBOSE_HELP, set_verbose
from dpo_ray.train.stopping import TrainingError
from dpo_ray.tune.settings import TuneSettings, load_sweep

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "sweep.yaml"


def main(argv: list[str] | None = None) -> int:
    groups = sections(Config) + sections(TuneSettings, "tune.", "tune")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=format_help(groups),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="sweep YAML: a run config plus a tune: group (default: configs/sweep.yaml)")
    parser.add_argument("--resume", metavar="SWEEP_DIR", help="continue the sweep in this output_dir (its saved config is used)")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    parser.add_argument("overrides", nargs="*", help="dotted overrides: run keys (train.max_steps=20) or tune keys (tune.num_samples=4)")
    args = parser.parse_args(argv)
    set_verbose(args.verbose)  # read where Ray starts (console.start_ray)
    try:
        if args.resume:
            if args.config or args.overrides:
                raise ConfigError("--resume takes the sweep's saved config; drop --config and the overrides")
            from dpo_ray.tune.driver import STATE_FILE

            state = Path(args.resume) / STATE_FILE
            if not state.is_file():
                raise ConfigError(f"--resume {args.resume}: no {STATE_FILE} there; is it a sweep's output_dir?")
            base, settings = load_sweep(str(state), [])
        else:
            base, settings = load_sweep(args.config or str(DEFAULT_CONFIG), args.overrides)
        preflight_sweep(base, settings)  # the same checks as pipelines/dpo.py, before Ray and torch load
        from dpo_ray.tune.driver import SweepInterrupted, run_sweep  # Ray loads only for a valid config

        summary = run_sweep(base, settings, resume=bool(args.resume))
    except (ConfigError, DataError, TrainingError) as err:
        print(f"dpo_ray: error: {err}", file=sys.stderr)
        return 2
    except SweepInterrupted as err:
        print(f"dpo_ray: {err}", file=sys.stderr)
        return 130
    print(f"best trial {summary['best_trial']}: {summary['objective']} = {summary['best_value']:.4f} with "
          f"{summary['best_params']}; reference scored {summary['ref/scoring_runs']} time(s) for {summary['trials']} trials")
    print(f"best model {summary['best_model']}; rerun with: python pipelines/dpo.py --config {summary['best_config']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
