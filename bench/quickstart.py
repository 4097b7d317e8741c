"""Time the README quickstart end to end (a fresh `python pipelines/dpo.py`, local Ray start included).

python bench/quickstart.py [--runs 1] [key=value ...]   -> bench/results/quickstart.json, then bench/report.py
Target (issue 2): held-out eval/rewards/accuracies >= 0.9 within 3 minutes on the 2-core CPU machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, write_result



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    runs = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            subprocess.run([sys.executable, "pipelines/dpo.py", f"output_dir={tmp}/out", *args.overrides],
                           cwd=REPO, check=True, capture_output=True)
            wall = time.perf_counter() - start
            m = json.loads(Path(tmp, "out", "metrics.json").read_text())
        runs.append({
            "wall_seconds": round(wall, 1),
            "eval_accuracy_start": m["initial_eval/rewards/accuracies"],
            "eval_accuracy_end": m["eval/rewards/accuracies"],
            "eval_loss_end": m["eval/loss"],
            "ref_seconds": round(m["ref/seconds"], 1),
            "train_seconds": round(m["perf/train_seconds"], 1),
            "pairs_per_second": round(m["perf/pairs_per_second"], 1),
            "tokens_per_second": round(m["perf/tokens_per_second"]),
        })
        print(runs[-1], flush=True)
    path = write_result("quickstart", {"command": "python pipelines/dpo.py " + " ".join(args.overrides), "runs": runs})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
