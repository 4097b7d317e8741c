"""Score the reference model once and commit the cache: python pipelines/precompute_ref.py [--config FILE] [key=value ...].

Runs the data and reference stages of pipelines/dpo.py with the same config, so a later run,
restart or sweep trial with that config finds `reference: cache hit`.
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

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "quickstart.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=format_help(sections(Config)),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config (default: the quickstart)")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    parser.add_argument("overrides", nargs="*", help="dotted overrides, as pipelines/dpo.py takes them")
    args = parser.parse_args(argv)
    set_verbose(args.verbose)  # read where Ray starts (console.start_ray)
    try:
        cfg = load_config(args.config, args.overrides)
        if cfg.loss.reference_free():
            raise ConfigError(f"loss.type={cfg.loss.type} is reference-free: there is nothing to precompute")
        if not cfg.reference.cache_dir:
            raise ConfigError("reference.cache_dir is off: a precomputed reference would be thrown away")
        preflight(cfg, writes_model=False)  # the same checks as pipelines/dpo.py, before Ray and torch load
        from dpo_ray.run import precompute_reference

        data, ref = precompute_reference(cfg)
    except (ConfigError, DataError) as err:
        print(f"dpo_ray: error: {err}", file=sys.stderr)
        return 2
    state = "cache hit" if ref.cache_hit else "scored and cached"
    print(f"reference: {state} ({ref.key}) in {ref.seconds:.1f} s; {data.train_pairs + data.eval_pairs} pairs, "
          f"pad fraction {ref.pad_fraction:.3f}, cache_dir {cfg.reference.cache_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
