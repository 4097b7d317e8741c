"""Regenerate the quickstart's data and tiny model under pipelines/assets/ (offline, seconds), and the
online example's prompts and warm-started policy (pipelines/online_dpo.py; --online-only: just those).

python pipelines/make_quickstart_assets.py [--pairs 3000] [--prompts 600] [--seed 0] [--online-only]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dpo_ray.toy import build_tiny_model, make_preference_rows, make_prompts, sft_tiny_model

ASSETS = Path(__file__).parent / "assets"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--prompts", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--online-only", action="store_true", help="only the online example's prompts and policy")
    args = parser.parse_args()
    rows = make_preference_rows(args.pairs, seed=args.seed)
    ASSETS.mkdir(parents=True, exist_ok=True)
    if not args.online_only:
        with open(ASSETS / "quickstart_pairs.jsonl", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        build_tiny_model(ASSETS / "tiny-llama", rows, seed=args.seed)
        print(f"wrote {len(rows)} pairs and the tiny model to {ASSETS}")
    # The online example: other prompts than the pairs' (seed + 1), a policy that writes reviews of
    # either sentiment, following the ask 65% of the time (toy.sft_tiny_model).
    with open(ASSETS / "online_prompts.jsonl", "w") as f:
        f.writelines(json.dumps({"prompt": p}) + "\n" for p in make_prompts(args.prompts, seed=args.seed + 1))
    sft_tiny_model(ASSETS / "tiny-llama", rows, ASSETS / "tiny-llama-sft", follow=0.65, seed=args.seed)
    print(f"wrote {args.prompts} prompts and the warm-started policy tiny-llama-sft to {ASSETS}")


if __name__ == "__main__":
    main()
