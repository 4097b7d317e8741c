"""Iterative DPO: round after round, the policy samples, a judge scores, pairs are built and the
offline pipeline (dpo_ray.run) trains the next policy (orchestration ring; README: Iterative DPO).

Under output_dir:
  config.yaml                   the resolved config: a rerun continues only under the same one
  round_0/heldout.jsonl         the initial model's held-out samples, scored (the win-rate baseline)
  round_<r>/samples.jsonl       generation: K responses per training prompt from round r-1's policy
  round_<r>/generations.jsonl   judging: the samples with their scores
  round_<r>/pairs.jsonl         pairing: the preference file the offline run reads (with the scores)
  round_<r>/train/              the offline run's outputs (model/, metrics.json, ...)
  round_<r>/heldout.jsonl       evaluation: round r's policy on the held-out prompts, scored
  round_<r>/round.json          the round's row; written last: the round is finished
  rounds.csv, rounds.png        one row per round; score and win rate by round
  model/                        the last round's policy
Each stage's file is written atomically when the stage ends, and a stage whose file exists is not
run again: a rerun after a crash continues at the first unfinished stage of the first unfinished round.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from dpo_ray.config import Config, ConfigError
from dpo_ray.config_load import resolve_paths
from dpo_ray.console import start_ray
from dpo_ray.data.parse import is_eval_prompt
from dpo_ray.online.pairing import build_pairs
from dpo_ray.online.prompts import check_online, read_prompts
from dpo_ray.online.stage import OnlineError, generate, judge, prompt_key
from dpo_ray.outputs import FINISHED_MARK
from dpo_ray.paths import atomic_write

ROUND_COLUMNS = ("round", "heldout_mean_score", "win_rate_vs_initial", "pairs", "skipped_ties", "skipped_below_margin",
                 "empty_responses", "train_loss", "train_reward_accuracy", "seconds")


def run_online(config: Config) -> dict[str, Any]:
    """All rounds (continuing an interrupted run in the same output_dir); returns the summary."""
    cfg = resolve_paths(config)
    check_online(cfg)  # judge, generator, prompts, export: one line before Ray starts
    out = Path(cfg.output_dir)
    claim_output(out, cfg)
    start_ray()
    prompts = [prompt_key(p) for p in read_prompts(cfg.online)]
    heldout = [p for p in prompts if is_eval_prompt(p, cfg.online.heldout_fraction)]
    train = [p for p in prompts if not is_eval_prompt(p, cfg.online.heldout_fraction)]
    if not heldout or not train:
        raise ConfigError(f"online.prompts={cfg.online.prompts}: {len(prompts)} prompts give {len(train)} for training "
                          f"and {len(heldout)} held out at online.heldout_fraction={cfg.online.heldout_fraction}; "
                          "both need at least one (add prompts or change the fraction)")
    print(f"online: {len(train)} training prompts, {len(heldout)} held out; {cfg.online.rounds} rounds", flush=True)
    initial = cfg.model.name_or_path
    baseline = stage(out / "round_0" / "heldout.jsonl", lambda: evaluate(cfg, initial, heldout))
    rows = [round_row(0, baseline, baseline, {}, {}, 0.0)]
    policy = initial
    for r in range(1, cfg.online.rounds + 1):
        rows.append(one_round(cfg, out / f"round_{r}", r, policy, initial, train, heldout, baseline))
        policy = str(out / f"round_{r}" / "train" / "model")
        write_rounds(out, rows)
    publish_model(Path(policy), out / "model")
    return {"rounds": rows, "model_dir": str(out / "model"), "output_dir": str(out)}


def one_round(cfg: Config, d: Path, r: int, policy: str, initial: str, train: list[str], heldout: list[str],
              baseline: list[dict[str, Any]]) -> dict[str, Any]:
    """One round's stages, each skipped when its file is there; returns the round's row."""
    if (d / "round.json").exists():
        return json.loads((d / "round.json").read_text())
    started = time.perf_counter()
    on = cfg.online
    samples = stage(d / "samples.jsonl",
                    lambda: generate(cfg, policy, train, round_index=r, purpose="train", n=on.samples_per_prompt))
    judged = stage(d / "generations.jsonl", lambda: judge(cfg, nonempty(samples, r)))
    pairs, stats = build_pairs(groups(judged), on.pairing, on.margin)
    if not pairs:
        raise OnlineError(f"round {r}: no preference pair from {stats.groups} prompts ({stats.ties} with all scores equal, "
                          f"{stats.below_margin} with no gap above online.margin={on.margin}); "
                          "raise online.samples_per_prompt or generation.temperature, or lower online.margin")
    if not (d / "pairs.jsonl").exists():
        write_jsonl(d / "pairs.jsonl", pairs)
    print(f"online: round {r}: {stats.pairs} pairs from {stats.groups} prompts ({stats.ties} ties, "
          f"{stats.below_margin} below the margin skipped)", flush=True)
    summary = train_round(cfg, d, policy, initial if on.reference == "initial" else policy)
    scored = stage(d / "heldout.jsonl", lambda: evaluate(cfg, str(d / "train" / "model"), heldout))
    counts = {"pairs": stats.pairs, "skipped_ties": stats.ties, "skipped_below_margin": stats.below_margin,
              "empty_responses": len(samples) - len(judged)}
    row = round_row(r, scored, baseline, counts, summary, time.perf_counter() - started)
    atomic_write(d / "round.json", json.dumps(row, indent=2))
    print(f"online: round {r}: held-out mean score {row['heldout_mean_score']:.3f}, "
          f"win rate vs initial {row['win_rate_vs_initial']:.3f}", flush=True)
    return row


def round_config(cfg: Config, d: Path, policy: str, reference: str) -> Config:
    """The offline run of one round: the round's pairs, its starting policy and reference, its own output_dir."""
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, name_or_path=policy),
        data=dataclasses.replace(cfg.data, path=str(d / "pairs.jsonl"), sources=[], split="train", subset=None,
                                 revision=None, format="auto"),
        reference=dataclasses.replace(cfg.reference, name_or_path=None if reference == policy else reference),
        output_dir=str(d / "train"),
        overwrite_output_dir=True,  # an interrupted round's training is redone from its start
    )


def train_round(cfg: Config, d: Path, policy: str, reference: str) -> dict[str, Any]:
    """The offline pipeline on the round's pairs, unless it finished before (its metrics.json and model/)."""
    train_dir = d / "train"
    if (train_dir / FINISHED_MARK).exists() and (train_dir / "model").exists():
        return json.loads((train_dir / FINISHED_MARK).read_text())
    from dpo_ray.run import run  # torch and Ray Train load here, not for a config check

    return run(round_config(cfg, d, policy, reference))


def evaluate(cfg: Config, policy: str, heldout: list[str]) -> list[dict[str, Any]]:
    """The policy's held-out samples, scored; the same seeds every round (a paired comparison)."""
    samples = generate(cfg, policy, heldout, round_index=0, purpose="heldout", n=cfg.online.eval_samples_per_prompt)
    return judge(cfg, samples)


def nonempty(samples: list[dict[str, Any]], r: int) -> list[dict[str, Any]]:
    """The samples with some text; OnlineError when there is none."""
    kept = [s for s in samples if s["response"].strip()]
    if not kept:
        raise OnlineError(f"round {r}: all {len(samples)} sampled responses are empty (the policy ends at once); "
                          "check the model, online.generation.max_new_tokens and the prompts' format")
    return kept


def groups(judged: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Scored rows -> one group per prompt {prompt (decoded), responses, scores}, in prompt order."""
    by_prompt: dict[str, dict[str, Any]] = {}
    for row in judged:
        group = by_prompt.setdefault(row["prompt"], {"prompt": json.loads(row["prompt"]), "responses": [], "scores": []})
        group["responses"].append(row["response"])
        group["scores"].append(row["score"])
    return list(by_prompt.values())


def round_row(r: int, scored: list[dict[str, Any]], baseline: list[dict[str, Any]], counts: dict[str, int],
              summary: dict[str, Any], seconds: float) -> dict[str, Any]:
    """rounds.csv's row: mean held-out score, and the win rate against the initial model's sample
    with the same prompt and seed (a tie counts half)."""
    initial = {(b["prompt"], b["sample"]): b["score"] for b in baseline}
    wins = [1.0 if s["score"] > initial[(s["prompt"], s["sample"])] else 0.5 if s["score"] == initial[(s["prompt"], s["sample"])]
            else 0.0 for s in scored]
    return {"round": r, "heldout_mean_score": sum(s["score"] for s in scored) / len(scored),
            "win_rate_vs_initial": sum(wins) / len(wins), "pairs": counts.get("pairs", 0),
            "skipped_ties": counts.get("skipped_ties", 0), "skipped_below_margin": counts.get("skipped_below_margin", 0),
            "empty_responses": counts.get("empty_responses", 0), "train_loss": summary.get("train/loss"),
            "train_reward_accuracy": summary.get("train/rewards/accuracies"), "seconds": round(seconds, 1)}


def stage(path: Path, compute: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The stage's rows from its file when it finished before, else computed and written atomically."""
    if path.exists():
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = compute()
    write_jsonl(path, rows)
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def write_rounds(out: Path, rows: list[dict[str, Any]]) -> None:
    """rounds.csv and rounds.png from every finished round."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=ROUND_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out / "rounds.csv", buf.getvalue())
    from dpo_ray.plots import plot_rounds

    plot_rounds(rows, out / "rounds.png")


def claim_output(out: Path, cfg: Config) -> None:
    """A new output_dir, or one this config started: continue (online.rounds may differ: more rounds
    continue after the last finished one); another config's run is kept unless overwrite_output_dir."""
    written = out / "config.yaml"
    if written.exists() and not same_run(written.read_text(), cfg):
        if not cfg.overwrite_output_dir:
            raise ConfigError(f"output_dir {out} holds an online run with another config ({written}); rerun with that "
                              "config to continue it (online.rounds may change), choose another output_dir, "
                              "or set overwrite_output_dir=true")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(written, cfg.to_yaml())


def same_run(written: str, cfg: Config) -> bool:
    """The config.yaml an earlier run wrote equals ``cfg`` but for online.rounds."""
    import yaml

    raw, now = yaml.safe_load(written), yaml.safe_load(cfg.to_yaml())
    if not isinstance(raw, dict) or not isinstance(raw.get("online"), dict):
        return False
    raw["online"].pop("rounds", None)
    now["online"].pop("rounds", None)
    return raw == now


def publish_model(policy: Path, target: Path) -> None:
    """The last round's model under output_dir/model, swapped in whole."""
    staged = target.with_name(".model.partial")
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(policy, staged)
    if target.exists():
        shutil.rmtree(target)
    staged.rename(target)
