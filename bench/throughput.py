"""Training throughput against TRL's DPOTrainer, and dpo_ray's 1 vs 2 worker scaling.

python bench/throughput.py [--hidden 256 --layers 4 --steps 20]   -> bench/results/throughput.json
python bench/throughput.py --smoke --results-dir /tmp/x           -> a 2-layer, 64-wide model, 4 steps, the
                                                                     arms of arm_plan(smoke=True), in one process

Issue 9: same model, data, global batch, sequence length, precision (fp32 on CPU) and step count in
every arm. dpo_ray: `python pipelines/dpo.py`, 2 workers x 1 CPU (the machine) with cold caches; then,
with the caches it filled (a rerun's or a sweep trial's start: no tokenizing, no reference pass), the
same without length grouping (train.group_by_length=false: batches as TRL builds them, so the ratio
shows what is not saved padding) and 1 worker x 1 CPU (scaling). TRL: bench/trl_dpo.py, one process
with 2 torch threads (the machine), its default (a frozen reference model scored on every batch) and
precompute_ref_log_probs=True. Steady state: pairs/s and real (non-pad) tokens/s over the steps after
the first 2, each step's whole wall time (eval left out), measured inside each run (dpo_ray's
perf/steady_*, TRL's step-end callback and collator). Time to first step: from the launch of
the subprocess to the end of optimizer step 1 (Python start, imports, Ray start, tokenization, the
reference pass where one runs before training, model load, the step-0 eval that both run).
Targets: dpo_ray >= 1.3x TRL default's pairs/s and >= 1.1x TRL with precomputed reference.

Issue 16 adds the setting where dpo_ray is weakest (result key "uniform"): short pairs of near-uniform
length, so length grouping saves nothing, one worker, and no resource settings (auto, as a user who
sets nothing runs), against TRL default and precompute. Targets there: >= 1.3x and >= 1.0x.
`--only-uniform` runs that setting alone and keeps the varying-length arms of the results file.

Issue 20 adds long conversations (result key "long", `--only-long`): prompts of 50-1,500 tokens, length-
grouped fixed micro-batches against a token budget (train.micro_batch_tokens), padded and packed
(train.padding_free), and TRL; pairs/s, tokens/s, pad fraction, peak memory per worker and its
step-to-step variation (train/peak_memory_mib, every step).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import statistics
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from common import REPO, RESULTS, machine, run_in_repo, scratch_dir, write_result
from reference import varying_rows

sys.path.insert(0, str(REPO))

from dpo_ray.modeling import load_model  # noqa: E402
from dpo_ray.toy import build_tiny_model, make_preference_rows  # noqa: E402

TARGET_DEFAULT, TARGET_PRECOMPUTE = 1.3, 1.1
LONG_TOKENS = 8192  # token slots per micro-batch in the long setting's tight budget and packed arms
UNIFORM_TARGET_DEFAULT, UNIFORM_TARGET_PRECOMPUTE = 1.3, 1.0  # issue 16: uniform short pairs, 1 worker, defaults
TRL_DEFAULT, TRL_PRECOMPUTE = "TRL default", "TRL precompute_ref_log_probs=True"
UNGROUPED, ONE_WORKER = "dpo_ray 2 workers, no length grouping", "dpo_ray 1 worker"
LONG_GROUPED, LONG_BUDGET, LONG_TIGHT, LONG_PACKED = (
    "dpo_ray 2 workers, length-grouped", "dpo_ray 2 workers, token budget at the grouped arm's largest micro-batch",
    f"dpo_ray 2 workers, token budget {LONG_TOKENS}", "dpo_ray 2 workers, token budget + packed")
LONG_MEMORY_VARIATION, LONG_TARGET_VS_GROUPED = 0.15, 1.0  # issue 20: a token budget's step peaks, its pairs/s


def arm_plan(smoke: bool, has_trl: bool) -> dict[str, list[str]]:
    """The arms each setting runs, in order (the first dpo_ray arm fills the caches the later ones read).

    --smoke runs each arm function once, not each measurement (a dpo_ray run costs ~40 s of worker
    start-up however short): it leaves out the ungrouped arm (the 2-worker arm with
    train.group_by_length=false: parity's dpo_ray trains ungrouped, padding's smoke compares the two
    orders), the 1-worker arm (the same run with another worker count: the uniform setting's arm trains
    on 1 worker), so no scaling ratios, and the uniform setting's TRL arms (the varying setting's on
    other pairs; both settings' ratios are ratios_to_trl)."""
    plan = {"varying": ["dpo_ray 2 workers", UNGROUPED, ONE_WORKER, TRL_DEFAULT, TRL_PRECOMPUTE],
            "uniform": ["dpo_ray 1 worker, defaults", TRL_DEFAULT, TRL_PRECOMPUTE],
            "long": [LONG_GROUPED, LONG_BUDGET, LONG_TIGHT, LONG_PACKED, TRL_DEFAULT, TRL_PRECOMPUTE]}
    if smoke:
        plan = {"varying": [a for a in plan["varying"] if a not in (UNGROUPED, ONE_WORKER)], "uniform": plan["uniform"][:1],
                "long": [LONG_GROUPED, LONG_PACKED]}
    return {setting: [a for a in arms if has_trl or not a.startswith("TRL")] for setting, arms in plan.items()}


def run_arms(calls: dict[str, Any], names: list[str], done: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Each named arm's call in plan order, its result printed as it lands (and kept in ``done`` by name,
    for a later arm that sizes itself from an earlier one)."""
    arms = []
    for name in names:
        arms.append(calls[name]())
        if done is not None:
            done[name] = arms[-1]
        print(arms[-1], flush=True)
    return arms


def run(cmd: list[str], setup: dict[str, Any]) -> float:
    """Run ``cmd`` in the repo root with a fresh local Ray (in this process under --smoke); the Unix time it was launched."""
    return run_in_repo(cmd, in_process=setup["in_process"])[0]


def ratios_to_trl(ours: float, by: dict[str, float], targets: tuple[float, float]) -> dict[str, Any]:
    """``ours`` over each TRL arm's pairs/s and whether both ``targets`` are met; {} where no TRL arm ran."""
    if TRL_DEFAULT not in by:  # TRL not installed, or the smoke plan's uniform setting
        return {}
    ratios: dict[str, Any] = {"vs_trl_default": round(ours / by[TRL_DEFAULT], 3),
                              "vs_trl_precompute": round(ours / by[TRL_PRECOMPUTE], 3)}
    ratios["targets_met"] = ratios["vs_trl_default"] >= targets[0] and ratios["vs_trl_precompute"] >= targets[1]
    return ratios


def dpo_ray_arm(workers: int, setup: dict[str, Any], work: Path, group_by_length: bool = True, warm: bool = False,
                defaults: bool = False, label: str | None = None, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """One pipelines/dpo.py run on the shared caches: the first arm fills them (cold), later arms (``warm``) read them.
    ``defaults``: train.cpus_per_worker and train.zero_stage left to auto, as a user who sets nothing runs.
    ``label``: the arm's name and output folder, with ``extra`` overrides (the long setting's arms)."""
    tag = setup.get("tag", "")
    out = work / f"dpo_ray{tag}-w{workers}{'' if group_by_length else '-ungrouped'}{'-defaults' if defaults else ''}"
    out = out.with_name(f"{out.name}-{label.replace(' ', '-').replace(',', '')}") if label else out
    cache = work / f"dpo_ray{tag}-cache"  # empty for the first arm; the manifests name their files, so it stays put
    launched = run([sys.executable, "pipelines/dpo.py", f"model.name_or_path={setup['model']}", f"data.path={setup['data']}",
                    f"data.max_length={setup['max_length']}", f"data.eval_fraction={setup['eval_fraction']}",
                    "loss.type=sigmoid", "loss.beta=0.1", f"train.max_steps={setup['steps']}",
                    f"train.batch_size={setup['batch_size']}", f"train.micro_batch_size={setup['micro_batch_size']}",
                    f"train.num_workers={workers}", *([] if defaults else ["train.cpus_per_worker=1", "train.zero_stage=2"]),
                    f"train.eval_every={setup['steps']}",
                    "train.learning_rate=1e-4", "train.warmup_ratio=0.1", "train.report_to=[]",
                    f"train.group_by_length={str(group_by_length).lower()}",
                    f"data.cache_dir={cache}/tokenized", f"reference.cache_dir={cache}/reference", f"output_dir={out}",
                    *extra], setup)
    m = json.loads((out / "metrics.json").read_text())
    name = f"dpo_ray {workers} worker{'s' if workers > 1 else ''}" + ("" if group_by_length else ", no length grouping")
    name = label or name + (", defaults" if defaults else "")
    return {"arm": name, "workers": workers, "caches": "warm" if warm else "cold",
            "steady_pairs_per_second": m["perf/steady_pairs_per_second"],
            "steady_tokens_per_second": m["perf/steady_tokens_per_second"],
            "seconds_to_first_step": m["perf/first_step_time"] - launched,
            "ray_start_seconds": m["perf/ray_start_seconds"], "data_and_reference_seconds": m["perf/prepare_seconds"],
            "reference_seconds": m.get("ref/seconds"), "pad_fraction": m["perf/pad_fraction"],
            "model_state_mib_per_worker": m.get("perf/model_state_mib"), "peak_memory_mib_per_worker": m.get("perf/peak_memory_mib"),
            "auto": m.get("auto", ""), "eval_loss_final": m["eval/loss"],
            "micro_batch_tokens_mean": m.get("perf/micro_batch_tokens_mean"), "micro_batch_tokens_max": m.get("perf/micro_batch_tokens_max"),
            **step_peaks(out)}


def step_peaks(out: Path) -> dict[str, Any]:
    """The per-report peak memory (train/peak_memory_mib; logged every step here) over the steps after
    the first 2: its smallest and largest, and (max - min) / max, the step-to-step variation."""
    rows = [json.loads(line) for line in (out / "metrics_history.jsonl").read_text().splitlines()]
    peaks = [r["train/peak_memory_mib"] for r in rows if "train/peak_memory_mib" in r and r["step"] > 2]
    if not peaks:
        return {}
    return {"step_peak_mib_min": min(peaks), "step_peak_mib_max": max(peaks),
            "step_peak_variation": (max(peaks) - min(peaks)) / max(peaks)}


def uniform_setting(args: argparse.Namespace, work: Path, has_trl: bool) -> dict[str, Any]:
    """Issue 16's setting, where length grouping saves nothing: short pairs of near-uniform length (the
    quickstart's, max_length 64), one worker, dpo_ray's defaults only, batch 16 in micro-batches of 8."""
    steps = 4 if args.smoke else args.uniform_steps
    rows = make_preference_rows(int(steps * 16 / 0.95) + 32, seed=5)
    model_dir = build_tiny_model(work / "uniform-model", rows, hidden_size=args.hidden, num_layers=args.uniform_layers,
                                 num_heads=max(args.hidden // 64, 1))
    data = work / "uniform-pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    setup = {"model": str(model_dir), "data": str(data), "max_length": 64, "eval_fraction": 0.05, "steps": steps,
             "batch_size": 16, "micro_batch_size": 8, "cpus": 2, "tag": "-uniform", "in_process": args.smoke}
    calls = {"dpo_ray 1 worker, defaults": lambda: dpo_ray_arm(1, setup, work, defaults=True),
             TRL_DEFAULT: lambda: trl_arm(False, setup, work), TRL_PRECOMPUTE: lambda: trl_arm(True, setup, work)}
    arms = [calls[name]() for name in arm_plan(args.smoke, has_trl)["uniform"]]
    by = {a["arm"]: a["steady_pairs_per_second"] for a in arms}
    ratios = ratios_to_trl(by["dpo_ray 1 worker, defaults"], by, (UNIFORM_TARGET_DEFAULT, UNIFORM_TARGET_PRECOMPUTE))
    params = sum(p.numel() for p in load_model(str(model_dir)).parameters())
    return {"notes": (f"Llama built from config ({params / 1e6:.2f}M parameters), fp32; {len(rows)} quickstart-style pairs "
                      f"(near-uniform, short), max_length 64; {steps} steps of 16 pairs in micro-batches of 8; dpo_ray with 1 "
                      "worker and no resource settings (auto), TRL with 2 torch threads (the machine). Targets: >= "
                      f"{UNIFORM_TARGET_DEFAULT}x TRL default, >= {UNIFORM_TARGET_PRECOMPUTE}x TRL precompute."),
            "parameters": params, "arms": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in a.items()} for a in arms],
            **ratios}


def long_rows(n: int, seed: int = 7, longest: int = 1480) -> list[dict[str, str]]:
    """Quickstart pairs behind a long conversation: 40-1,480 filler words (one token each), so prompts
    of about 50-1,500 tokens, uniformly spread (issue 20's long-conversation set)."""
    rng = random.Random(seed)
    return [{**r, "prompt": " ".join(["please"] * rng.randint(40, longest)) + " " + r["prompt"]}
            for r in make_preference_rows(n, seed=seed)]


def long_setting(args: argparse.Namespace, work: Path, has_trl: bool) -> dict[str, Any]:
    """Issue 20's setting: prompts of 50-1,500 tokens, 2 workers x 1 CPU, batch 16 in micro-batches of 4;
    the token budget arms cut each worker's 8 pairs a step to LONG_TOKENS token slots (padded), or
    real tokens (packed). Every step's peak memory is logged (train.logging_steps=1)."""
    steps = 4 if args.smoke else args.long_steps
    rows = long_rows(int(steps * 16 / 0.95) + 16, longest=300 if args.smoke else 1480)  # smoke: the arms run, shorter
    hidden, layers = (64, 2) if args.smoke else (128, 2)
    model_dir = build_tiny_model(work / "long-model", rows, hidden_size=hidden, num_layers=layers, num_heads=2,
                                 max_positions=2048)
    data = work / "long-pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    setup = {"model": str(model_dir), "data": str(data), "max_length": 400 if args.smoke else 1600, "eval_fraction": 0.05, "steps": steps,
             "batch_size": 16, "micro_batch_size": 4, "cpus": 2, "tag": "-long", "in_process": args.smoke}
    every = ("train.logging_steps=1",)
    tight = (*every, f"train.micro_batch_tokens={LONG_TOKENS}")
    done: dict[str, dict[str, Any]] = {}  # the arms run so far: the equal-memory budget is the grouped arm's largest

    def budget_arm() -> dict[str, Any]:
        equal = int(done[LONG_GROUPED]["micro_batch_tokens_max"])  # slots of its largest micro-batch: its memory cap
        return {**dpo_ray_arm(2, setup, work, warm=True, label=LONG_BUDGET, extra=(*every, f"train.micro_batch_tokens={equal}")),
                "budget_tokens": equal}

    calls = {LONG_GROUPED: lambda: dpo_ray_arm(2, setup, work, label=LONG_GROUPED, extra=every), LONG_BUDGET: budget_arm,
             LONG_TIGHT: lambda: {**dpo_ray_arm(2, setup, work, warm=True, label=LONG_TIGHT, extra=tight), "budget_tokens": LONG_TOKENS},
             LONG_PACKED: lambda: {**dpo_ray_arm(2, setup, work, warm=True, label=LONG_PACKED,
                                                 extra=(*tight, "train.padding_free=true")), "budget_tokens": LONG_TOKENS},
             TRL_DEFAULT: lambda: trl_arm(False, setup, work), TRL_PRECOMPUTE: lambda: trl_arm(True, setup, work)}
    arms = run_arms(calls, arm_plan(args.smoke, has_trl)["long"], done)
    by = {a["arm"]: a for a in arms}
    repeats = [long_repeat(by)]
    for k in range(2, args.long_repeats + 1 if LONG_BUDGET in by else 2):  # each later repeat: the target's two arms again, warm, in the same order
        again = {name: dpo_ray_arm(2, setup, work, warm=True, label=f"{name}, repeat {k}", extra=(*every, *budget))
                 for name, budget in ((LONG_GROUPED, ()), (LONG_BUDGET, (f"train.micro_batch_tokens={by[LONG_BUDGET]['budget_tokens']}",)))}
        repeats.append(long_repeat(again))  # keyed by the arm each repeats (its label names the repeat)
        print(repeats[-1], flush=True)
    grouped = by[LONG_GROUPED]["steady_pairs_per_second"]
    named = (("budget", LONG_BUDGET), ("tight", LONG_TIGHT), ("packed", LONG_PACKED))
    ratios: dict[str, Any] = {f"{key}_vs_grouped": round(by[arm]["steady_pairs_per_second"] / grouped, 3)
                              for key, arm in named if arm in by}
    base = by[LONG_GROUPED]["peak_memory_mib_per_worker"]
    ratios.update({f"{key}_peak_vs_grouped": round(by[arm]["peak_memory_mib_per_worker"] / base, 3)
                   for key, arm in named if arm in by and base and by[arm]["peak_memory_mib_per_worker"]})
    if LONG_BUDGET in by:
        ratios["repeats"] = repeats
        # The targets are judged on the medians over the repeats: runs of the same command move the ratio by
        # about 10% and a variation by several points (three single runs on 2026-12-02/03, README).
        ratios["median_budget_vs_grouped"] = round(statistics.median(r["budget_vs_grouped"] for r in repeats), 3)
        ratios["median_budget_step_peak_variation"] = round(statistics.median(r["budget_step_peak_variation"] for r in repeats), 3)
        ratios["median_grouped_step_peak_variation"] = round(statistics.median(r["grouped_step_peak_variation"] for r in repeats), 3)
        ratios["budget_targets_met"] = (ratios["median_budget_step_peak_variation"] < LONG_MEMORY_VARIATION
                                        and ratios["median_budget_vs_grouped"] >= LONG_TARGET_VS_GROUPED)
    if TRL_DEFAULT in by:
        ratios.update({f"{key}_vs_trl_{trl}": round(by[arm]["steady_pairs_per_second"] / by[t]["steady_pairs_per_second"], 3)
                       for key, arm in (("grouped", LONG_GROUPED), *named)
                       for trl, t in (("default", TRL_DEFAULT), ("precompute", TRL_PRECOMPUTE)) if arm in by})
    params = sum(p.numel() for p in load_model(str(model_dir)).parameters())
    return {"notes": (f"Llama built from config ({params / 1e6:.2f}M parameters), fp32 on CPU; {len(rows)} pairs whose prompts "
                      f"hold 50-1,500 tokens (long_rows), max_length 1600; {steps} steps of 16 pairs, micro-batches of 4 "
                      "(TRL, length-grouped) or a token budget (train.micro_batch_tokens): as many token slots as the length-grouped "
                      f"arm's largest micro-batch (the same memory cap: the target arm), or {LONG_TOKENS} (a tighter cap, "
                      "reported beside it), padded; packed at "
                      f"{LONG_TOKENS} real tokens; 2 workers x 1 CPU, TRL 2 threads. Targets (token budget at the same cap): "
                      "step peak memory varies < "
                      f"{LONG_MEMORY_VARIATION:.0%}, pairs/s >= {LONG_TARGET_VS_GROUPED}x length-grouped, each the median over "
                      f"{len(repeats)} repeat(s) of the two arms (repeats: the first from the arms above, the later ones warm "
                      "runs of the same two arms, length-grouped first); packed: recorded as measured."),
            "parameters": params, "arms": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in a.items()} for a in arms],
            **ratios}


def long_repeat(by: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One repeat of the long setting's target: the budget arm's pairs/s over the length-grouped arm's (run
    just before it) and both arms' step-to-step peak variation; {} where the budget arm did not run (smoke)."""
    grouped, budget = by.get(LONG_GROUPED), by.get(LONG_BUDGET)
    if not (grouped and budget):
        return {}
    return {"grouped_pairs_per_second": round(grouped["steady_pairs_per_second"], 3),
            "budget_pairs_per_second": round(budget["steady_pairs_per_second"], 3),
            "budget_vs_grouped": round(budget["steady_pairs_per_second"] / grouped["steady_pairs_per_second"], 3),
            "grouped_step_peak_variation": round(grouped["step_peak_variation"], 3),
            "budget_step_peak_variation": round(budget["step_peak_variation"], 3)}


def trl_arm(precompute: bool, setup: dict[str, Any], work: Path) -> dict[str, Any]:
    out = work / f"trl{setup.get('tag', '')}-{'pre' if precompute else 'default'}.json"
    launched = run([sys.executable, "bench/trl_dpo.py", "--model", setup["model"], "--data", setup["data"],
                    "--max-length", str(setup["max_length"]), "--eval-fraction", str(setup["eval_fraction"]),
                    "--beta", "0.1", "--learning-rate", "1e-4", "--max-steps", str(setup["steps"]),
                    "--batch-size", str(setup["batch_size"]), "--micro-batch-size", str(setup["micro_batch_size"]),
                    "--eval-every", str(setup["steps"]), "--logging-steps", str(setup["steps"]), "--out", str(out),
                    "--threads", str(setup["cpus"]),
                    *(["--precompute-ref"] if precompute else [])], setup)
    m = json.loads(out.read_text())
    return {"arm": TRL_PRECOMPUTE if precompute else TRL_DEFAULT, "workers": 1,
            "steady_pairs_per_second": m["steady_pairs_per_second"], "steady_tokens_per_second": m["steady_tokens_per_second"],
            "seconds_to_first_step": m["first_step_time"] - launched, "torch_threads": m["torch_threads"],
            "eval_loss_final": m["eval/loss"], "peak_memory_mib_per_worker": m.get("peak_memory_mib")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--uniform-steps", type=int, default=120, help="steps of the uniform short-pair setting")
    parser.add_argument("--uniform-layers", type=int, default=6, help="layers of its model")
    alone = parser.add_mutually_exclusive_group()
    alone.add_argument("--only-uniform", action="store_true", help="run the uniform setting alone (merged into the results file)")
    alone.add_argument("--only-long", action="store_true", help="run the long-conversation setting alone (merged likewise)")
    parser.add_argument("--long-steps", type=int, default=16, help="steps of the long-conversation setting")
    parser.add_argument("--long-repeats", type=int, default=3,
                        help="runs of its two target arms (length-grouped, then the equal-cap budget); the targets use the medians")
    parser.add_argument("--smoke", action="store_true", help="a 2-layer, 64-wide model, 4 steps")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.smoke:
        args.hidden, args.layers, args.steps = 64, 2, 4
    work = scratch_dir("bench-throughput-")
    has_trl = importlib.util.find_spec("trl") is not None
    path = args.results_dir / "throughput.json"
    alone = args.only_uniform or args.only_long
    # Run alone, a setting is merged into the file: the others stay as the last full run measured them, under
    # the file's machine line (kept), and the re-measured setting carries its own machine, versions and date.
    result = json.loads(path.read_text()) if alone else varying_setting(args, work, has_trl)
    if not args.only_long:
        result["uniform"] = {**uniform_setting(args, work, has_trl), **({"machine": _machine(has_trl)} if alone else {})}
        print(result["uniform"], flush=True)
    if not args.only_uniform:
        result["long"] = {**long_setting(args, work, has_trl), **({"machine": _machine(has_trl)} if alone else {})}
        print(result["long"], flush=True)
    path = write_result("throughput", {**result, **({"trl": version("trl")} if has_trl and not alone else {})}, args.results_dir)
    print({k: v for k, v in result.items() if k.startswith(("vs_", "scaling", "memory", "targets"))}, f"wrote {path}")


def _machine(has_trl: bool) -> dict[str, Any]:
    """This run's machine line, with TRL's version: a setting run alone stores it beside its arms."""
    return {**machine(), **({"trl": version("trl")} if has_trl else {})}


def varying_setting(args: argparse.Namespace, work: Path, has_trl: bool) -> dict[str, Any]:
    """Issue 9's setting: pairs of widely varying length, 2 workers x 1 CPU, plus 1-worker scaling."""
    pairs = int(args.steps * args.batch_size / 0.95) + 16  # about one epoch: the reference passes score what trains
    rows = varying_rows(pairs, seed=0)
    model_dir = build_tiny_model(work / "model", rows, hidden_size=args.hidden, num_layers=args.layers,
                                 num_heads=max(args.hidden // 64, 1))
    params = sum(p.numel() for p in load_model(str(model_dir)).parameters())
    data = work / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    setup = {"model": str(model_dir), "data": str(data), "max_length": 192, "eval_fraction": 0.05, "steps": args.steps,
             "batch_size": args.batch_size, "micro_batch_size": args.micro_batch_size, "cpus": 2, "in_process": args.smoke}
    calls = {"dpo_ray 2 workers": lambda: dpo_ray_arm(2, setup, work),  # cold caches: tokenizing and the reference pass
             UNGROUPED: lambda: dpo_ray_arm(2, setup, work, group_by_length=False, warm=True),
             ONE_WORKER: lambda: dpo_ray_arm(1, setup, work, warm=True),
             TRL_DEFAULT: lambda: trl_arm(False, setup, work), TRL_PRECOMPUTE: lambda: trl_arm(True, setup, work)}
    arms = run_arms(calls, arm_plan(args.smoke, has_trl)["varying"])
    by = {a["arm"]: a for a in arms}
    ours = by["dpo_ray 2 workers"]["steady_pairs_per_second"]
    ratios: dict[str, Any] = {}
    if ONE_WORKER in by:  # not in the smoke plan
        ratios["scaling_2_vs_1_workers"] = round(ours / by[ONE_WORKER]["steady_pairs_per_second"], 3)
        ratios["memory_2_vs_1_workers"] = round(by["dpo_ray 2 workers"]["peak_memory_mib_per_worker"]
                                                / by[ONE_WORKER]["peak_memory_mib_per_worker"], 3)
    if has_trl:
        rates = {name: a["steady_pairs_per_second"] for name, a in by.items()}
        ratios.update(ratios_to_trl(ours, rates, (TARGET_DEFAULT, TARGET_PRECOMPUTE)))
        if UNGROUPED in rates:  # the same without length grouping: the part of the gain that is not saved padding
            ratios["ungrouped_vs_trl_precompute"] = round(rates[UNGROUPED] / rates[TRL_PRECOMPUTE], 3)
    else:
        ratios["trl_skipped"] = "TRL is not installed: pip install -e \".[bench]\""
    command = "python bench/throughput.py " + ("--smoke" if args.smoke else f"--hidden {args.hidden} --layers {args.layers} --steps {args.steps}")
    return {
        "command": command,
        "notes": (f"Llama built from config ({params / 1e6:.2f}M parameters), fp32 on CPU; {pairs} synthetic pairs with "
                  f"prompts of widely varying length (bench/reference.py varying_rows; at the default 689 pairs 25-157 tokens a "
                  f"sequence, checked once, so none is truncated at max_length 192), eval fraction 0.05; sigmoid loss, beta 0.1, lr 1e-4; {args.steps} steps "
                  f"of {args.batch_size} pairs in micro-batches of {args.micro_batch_size}; dpo_ray groups batches by "
                  "length (its default), TRL pads each micro-batch to its longest pair (its default). "
                  + "Issue 9: " + __doc__.split("Issue 9: ", 1)[1].split("Targets:", 1)[0].replace("\n", " ").strip()),
        "parameters": params, "arms": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in a.items()} for a in arms],
        **ratios,
    }


if __name__ == "__main__":
    main()
