"""Regenerate the quickstart's data and tiny model under pipelines/assets/ (offline, seconds).

python pipelines/make_quickstart_assets.py [--pairs 3000] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dpo_ray.toy import build_tiny_model, make_preference_rows

ASSETS = Path(__file__).parent / "assets"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = make_preference_rows(args.pairs, seed=args.seed)
    ASSETS.mkdir(parents=True, exist_ok=True)
    with open(ASSETS / "quickstart_pairs.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    build_tiny_model(ASSETS / "tiny-llama", rows, seed=args.seed)
    print(f"wrote {len(rows)} pairs and the tiny model to {ASSETS}")


if __name__ == "__main__":
    main()
