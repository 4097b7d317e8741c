"""The benchmarks, one after another, then the charts and RESULTS.md.

python bench/run_all.py [--all | --only data,reference,...] [--smoke]

By default the comparisons with the peers (throughput and parity against TRL, MFU, sweep cost);
--all adds the stage benches (data, reference, padding, memory, losses, quickstart, online).

Each bench writes bench/results/<name>.json (machine, versions, date, command, how it was measured);
bench/plots.py draws bench/results/plots/*.png and bench/report.py renders bench/RESULTS.md from them.
The benches run one at a time (they time themselves and expect the machine to be otherwise idle).
Seen on the 2-core CPU machine: data 6 min, reference 13 min, padding 1 min, memory 6 min; the
default set's times are in bench/RESULTS.md (run_all). TRL arms need the bench extra (pip install -e ".[bench]").
--smoke runs the benches that have a small mode in it, into a scratch directory, and draws their charts there.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, write_result

BENCH = Path(__file__).resolve().parent
# name -> (full command args, smoke args or None when the bench has no small mode)
BENCHES: dict[str, tuple[list[str], list[str] | None]] = {
    "throughput": (["--long-repeats", "1"], ["--smoke"]),  # the repeats (bench/throughput.py alone) add ~15 min
    "parity": ([], ["--smoke"]),
    "mfu": ([], ["--smoke"]),
    "sweep": (["--steps", "40"], ["--smoke"]),  # 40 steps a run (sweep.yaml has 60): keeps the default set under 30 min
    "data": ([], ["--smoke"]),
    "reference": ([], None),
    "padding": ([], ["--smoke"]),
    "memory": ([], ["--smoke"]),
    "losses": ([], None),
    "quickstart": ([], None),
    "online": ([], None),  # issue 22: the iterative-DPO example, about 6 min
}
PEERS = ("throughput", "parity", "mfu", "sweep")  # issue 9's comparisons: the default set


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated bench names: " + ",".join(BENCHES))
    parser.add_argument("--all", action="store_true", help="every bench (the stage benches too), not only " + ",".join(PEERS))
    parser.add_argument("--smoke", action="store_true", help="small modes only, results to a scratch directory")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(BENCHES) if args.all else list(PEERS)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        raise SystemExit(f"--only: unknown bench {unknown}; choose from {list(BENCHES)}")
    scratch = tempfile.mkdtemp(prefix="bench-smoke-") if args.smoke else None
    failed, seconds = [], {}
    for name in names:
        full, smoke = BENCHES[name]
        if args.smoke and smoke is None:
            print(f"[run_all] {name}: no small mode, skipped in --smoke", flush=True)
            continue
        cmd = [sys.executable, str(BENCH / f"{name}.py"), *(smoke + ["--results-dir", scratch] if args.smoke else full)]
        print(f"[run_all] {' '.join(cmd)}", flush=True)
        start = time.perf_counter()
        code = subprocess.run(cmd, cwd=BENCH.parent).returncode
        seconds[name] = round(time.perf_counter() - start, 1)
        print(f"[run_all] {name}: exit {code} after {seconds[name]:.0f} s", flush=True)
        if code:
            failed.append(name)
    if not args.only:  # the time of the whole set, for the "under 30 minutes" figure
        write_result("run_all", {"command": "python bench/run_all.py" + (" --all" if args.all else "") + (" --smoke" if args.smoke else ""),
                                 "notes": "Wall seconds of each bench script (a fresh Python process each), one after another.",
                                 "seconds": seconds, "total_minutes": round(sum(seconds.values()) / 60, 1), "failed": failed},
                     Path(scratch) if scratch else RESULTS)
    if args.smoke:
        subprocess.run([sys.executable, str(BENCH / "plots.py"), "--results-dir", scratch, "--out", f"{scratch}/plots"],
                       cwd=BENCH.parent, check=True)
    else:
        for tool in ("plots", "report"):
            subprocess.run([sys.executable, str(BENCH / f"{tool}.py")], cwd=BENCH.parent, check=True)
    if failed:
        raise SystemExit(f"[run_all] failed: {failed}")


if __name__ == "__main__":
    main()
