"""Iterative (online) DPO: python pipelines/online_dpo.py [--config FILE] [key=value ...].

Each round the policy samples online.samples_per_prompt responses per prompt, the judge scores them,
pairs are built and the offline pipeline trains the next policy (README: Iterative DPO). Rerunning
the same command continues an interrupted run. Also runs as `ray job submit -- python pipelines/online_dpo.py`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dpo_ray.config import Config, ConfigError
from dpo_ray.config_help import format_help, sections
from dpo_ray.config_load import load_config
from dpo_ray.data.parse import DataError
from dpo_ray.screen import VERBOSE_HELP, set_verbose
from dpo_ray.train.stopping import RunInterrupted, TrainingError

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "online.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=format_help(sections(Config)),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config (default: the online example)")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. online.rounds=2 loss.beta=0.05")
    args = parser.parse_args(argv)
    set_verbose(args.verbose)
    try:
        cfg = load_config(args.config, args.overrides)
        from dpo_ray.online.rounds import run_online  # Ray loads only for a valid config
        from dpo_ray.online.stage import OnlineError

        try:
            summary = run_online(cfg)
        except OnlineError as err:
            raise DataError(str(err)) from None
    except (ConfigError, DataError, TrainingError) as err:
        print(f"dpo_ray: error: {err} (finished rounds are kept; rerun the same command to continue)", file=sys.stderr)
        return 2
    except (RunInterrupted, KeyboardInterrupt):
        print("dpo_ray: interrupted; finished rounds and stages are kept: rerun the same command to continue", file=sys.stderr)
        return 130
    last = summary["rounds"][-1]
    print(f"online: {len(summary['rounds']) - 1} rounds; held-out mean score {summary['rounds'][0]['heldout_mean_score']:.3f}"
          f" -> {last['heldout_mean_score']:.3f}, win rate vs initial {last['win_rate_vs_initial']:.3f}; "
          f"rounds.csv, rounds.png and model/ in {summary['output_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
