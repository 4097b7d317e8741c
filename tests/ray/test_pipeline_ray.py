"""Integration tier: the whole pipeline on a local Ray with 2 DeepSpeed workers (gloo, CPU)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM

from conftest import small_overrides
from dpo_ray.config_load import load_config
from dpo_ray.faults import FAULTS_ENV
from dpo_ray.data.parse import DataError
from dpo_ray.run import run
from dpo_ray.summary import format_summary

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module", autouse=True)
def ray_local():
    # Ray's processes inherit the environment: the MLflow client in Train's controller may use a
    # local file store (the stop_loss test tracks to one).
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_pipeline_end_to_end(tiny_model_dir: str, pairs_jsonl: str, tmp_path: Path, shared_caches: Path) -> None:
    """ZeRO-2, 2 workers; the same checks on a ZeRO-3 run: test_one_and_two_workers_follow_the_same_trajectory."""
    out = tmp_path / "run"
    summary = run(load_config(None, small_overrides(tiny_model_dir, pairs_jsonl, str(out), caches=shared_caches, **{"train.zero_stage": 2})))
    assert_finished_run(out, summary, tiny_model_dir, zero_stage=2, eval_steps=[0, 2, 4])


def assert_finished_run(out: Path, summary: dict, initial_dir: str, *, zero_stage: int, eval_steps: list[int]) -> None:
    """A finished 4-step run's outputs, metrics, start-up marks and step-0 invariant."""
    # Outputs: an HF model that from_pretrained loads, flat metrics with TRL names, the resolved config.
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    initial = AutoModelForCausalLM.from_pretrained(initial_dir)
    trained, start = model.state_dict(), initial.state_dict()
    assert trained.keys() == start.keys()
    assert all(trained[k].shape == start[k].shape for k in start)  # ZeRO-3 shards were gathered
    assert any(not torch.equal(trained[k], start[k]) for k in start)  # and it did train
    assert (out / "model" / "model.safetensors").exists() and (out / "model" / "tokenizer.json").exists()
    card = (out / "model" / "README.md").read_text()  # the model card (dpo_ray/model_card.py, issue 21)
    assert card.startswith("---\nlibrary_name: transformers\ntags:\n- dpo\n") and f"{summary['train/steps']:.0f} steps" in card
    assert f"| all | {summary['eval/loss']:.4g} |" in card and str(out.parent) not in card

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(summary))
    for key in ("eval/rewards/accuracies", "eval/loss", "eval/rewards/margins", "train/loss", "train/grad_norm",
                "train/learning_rate", "eval/logits/chosen", "perf/pairs_per_second", "perf/tokens_per_second"):
        assert math.isfinite(metrics[key]), key
    assert metrics["data/train_pairs"] + metrics["data/eval_pairs"] == metrics["data/rows_read"] == 400
    assert load_config(out / "config.yaml").train.zero_stage == zero_stage
    assert metrics["stop_reason"] == "max_steps" and metrics["train/steps"] == 4
    # steady state (steps 3 and 4, after dpo_ray.train.loop.WARMUP_STEPS) and the wall time step 1 ended
    assert 0 < metrics["perf/steady_pairs_per_second"] < metrics["perf/steady_tokens_per_second"]
    assert 0 < metrics["perf/first_step_time"] <= time.time()
    assert metrics["perf/job_seconds_to_first_step"] > metrics["perf/ray_start_seconds"] + metrics["perf/prepare_seconds"] > 0
    marks = [metrics[f"startup/{m}"] for m in STARTUP_MARKS] + [metrics["perf/first_step_time"]]  # bench/startup.py's timeline
    assert marks == sorted(marks) and metrics["startup/process_start"] <= metrics["startup/run_called"]
    assert (out / "curves.png").stat().st_size > 10_000 and any((out / "tensorboard").iterdir())

    # Step-0 invariant through the real stages: cached reference log-probs equal the trainer's own
    # policy log-probs, so the eval loss at step 0 and the step-1 train loss (all micro-batches run
    # before the first update) are ln 2.
    history = [json.loads(line) for line in (out / "metrics_history.jsonl").read_text().splitlines()]
    assert abs(history[0]["eval/loss"] - math.log(2)) < 1e-4
    assert abs(history[0]["eval/rewards/margins"]) < 1e-6
    assert history[1]["step"] == 1 and abs(history[1]["train/loss"] - math.log(2)) < 1e-4
    assert [h["step"] for h in history if "eval/loss" in h] == eval_steps


STARTUP_MARKS = ("run_called", "ray_ready", "data_done", "reference_done", "split_done", "fit_called", "worker_loop_entered",
                 "worker_deepspeed_imported", "worker_model_loaded", "worker_engine_ready", "worker_step0_eval_done")

BAD_FILES = {
    "missing_column.jsonl": ('{"prompt": "p", "chosen": "c", "rejected": "r"}\n{"prompt": "p", "chosen": "c"}\n', "missing_column.jsonl:2: missing 'rejected'"),
    "not_string.jsonl": ('{"prompt": "p", "chosen": 7, "rejected": "r"}\n', "not_string.jsonl:1: 'chosen' is int, expected a string"),
    "empty.jsonl": ("", "empty.jsonl: file has no rows"),
    "broken.jsonl": ('{"prompt": "p", "chosen": "c", "rejected": "r"}\n{"prompt": \n', "broken.jsonl:2: not valid JSON"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_input_stops_before_training(name: str, tiny_model_dir: str, tmp_path: Path) -> None:
    text, message = BAD_FILES[name]
    data = tmp_path / name
    data.write_text(text)
    out = tmp_path / "run"
    with pytest.raises(DataError) as info:
        run(load_config(None, small_overrides(tiny_model_dir, str(data), str(out))))
    assert message in str(info.value)
    assert len(str(info.value).splitlines()) == 1
    assert not (out / "model").exists() and not (out / "metrics.json").exists()


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SOURCES = {
    "jsonl": ("standard.jsonl", []), "json": ("standard.json", []), "parquet": ("standard.parquet", []),
    "csv": ("standard.csv", []), "glob": ("standard.json*", []), "file_uri": ("file://" + str(FIXTURES / "standard.parquet"), []),
    "mapped": ("mapped_columns.jsonl", ["data.columns.prompt=question", "data.columns.chosen=good", "data.columns.rejected=bad"]),
    "hh": ("hh_style.jsonl", []), "conversational": ("conversational.jsonl", []), "ultrafeedback": ("ultrafeedback.jsonl", []),
}


def test_every_source_kind_through_ray_data(tiny_model_dir: str) -> None:
    """Every source kind read by the data stage's Ray Data read tasks; the rows tokenized by one
    TokenizeRows, the class the tokenizer actor pool runs (the run tests run the pool itself: a
    pool per source kind would only add an actor start each)."""
    import pandas as pd

    from dpo_ray.data.stage import read_rows
    from dpo_ray.data.tokenize import TokenizeRows

    tokenize = TokenizeRows(tiny_model_dir, None, max_length=96, max_prompt_length=None, truncation_mode="keep_end",
                            eval_fraction=0.1)

    def tokenized(path: str, extra: list[str]):
        cfg = load_config(None, [f"model.name_or_path={tiny_model_dir}", f"data.path={path}", "data.max_length=96", *extra])
        rows = read_rows(cfg).to_pandas()
        return pd.DataFrame(tokenize({k: rows[k].to_numpy() for k in rows.columns}))

    baseline = None
    for kind, (name, extra) in SOURCES.items():
        path = name if "://" in name else str(FIXTURES / name)
        df = tokenized(path, extra)
        assert (df["drop_reason"] == "").all() and (df["error"] == "").all(), kind
        ids = sorted(df["row_id"])
        if kind in ("jsonl", "json", "parquet", "csv", "file_uri", "mapped"):
            baseline = baseline or ids
            assert len(ids) == 40 and ids == baseline, kind  # the same pairs whatever the reader
        elif kind == "glob":
            assert len(ids) == 80 and sorted(set(ids)) == baseline  # standard.json + standard.jsonl
    saved = tokenized(str(FIXTURES / "saved_dataset"), ["data.split=test"])
    assert len(saved) == 10 and (saved["drop_reason"] == "").all()


def test_missing_file_fails_before_ray_work(tiny_model_dir: str, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        run(load_config(None, small_overrides(tiny_model_dir, str(tmp_path / "nope.jsonl"), str(tmp_path / "run"))))


def test_train_controller_polls_often_unless_the_user_set_it(tiny_model_dir: str, pairs_jsonl: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray Train takes one report a worker per controller poll (default every 2 s): a run that logs
    more often than that waits on it. build_trainer shortens the interval, and leaves a user's own."""
    from dpo_ray.train.trainer import POLL_ENV, POLL_SECONDS, build_trainer

    cfg = load_config(None, small_overrides(tiny_model_dir, pairs_jsonl, str(tmp_path / "run")))
    ds = ray.data.range(2)
    monkeypatch.delenv(POLL_ENV, raising=False)
    build_trainer(cfg, ds, ds, {"steps_per_epoch": 1})
    assert float(os.environ[POLL_ENV]) == float(POLL_SECONDS) < 2.0
    monkeypatch.setenv(POLL_ENV, "1.5")
    build_trainer(cfg, ds, ds, {"steps_per_epoch": 1})
    assert os.environ[POLL_ENV] == "1.5"


def test_reference_free_run_skips_reference_reports_drops_and_duplicates_do_not_stop_it(
    tiny_model_dir: str, pair_rows: list[dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dpo_ray.reference.stage

    def no_reference(*args: object, **kwargs: object) -> None:
        raise AssertionError("the reference stage ran for a reference-free loss")

    monkeypatch.setattr(dpo_ray.reference.stage, "score_reference", no_reference)
    data = tmp_path / "pairs.jsonl"
    bad = [{"prompt": "p", "chosen": "c"}, pair_rows[0], {"prompt": "p", "chosen": "same", "rejected": "same"}]
    repeats = pair_rows[1:101]  # 101 duplicates in all: 20% of the rows, far above data.max_drop_fraction (0.05)
    data.write_text("".join(json.dumps(r) + "\n" for r in [*pair_rows, *bad, *repeats]))
    out = tmp_path / "run"
    summary = run(load_config(None, small_overrides(tiny_model_dir, str(data), str(out), **{"loss.type": "simpo", "loss.beta": 2.0})))
    assert summary["ref/skipped"] == 1.0
    assert summary["data/rows_read"] == 503 and summary["data/rows_dropped"] == 2
    assert summary["data/duplicates_removed"] == 101
    report = json.loads((out / "data_report.json").read_text())
    assert report["dropped"] == {"identical_completions": 1, "missing_field": 1}
    assert report["duplicates_removed"] == 101 and report["kept"] == 400 and report["drop_fraction"] == 2 / 503
    assert "101 duplicate pairs removed (data.dedup=false keeps them)" in format_summary(summary)
    assert report["examples"]["missing_field"] == [f"{data}:401"]
    assert report["duplicate_examples"] == [f"{data}:{n}" for n in (402, 404, 405, 406, 407)]  # the first 5 by source
    assert math.isfinite(summary["eval/loss"]) and (out / "model").exists()


def test_combined_losses_with_wpo_and_ld(tiny_model_dir: str, pairs_jsonl: str, tmp_path: Path, shared_caches: Path) -> None:
    out = tmp_path / "run"
    overrides = small_overrides(tiny_model_dir, pairs_jsonl, str(out), caches=shared_caches, **{"train.zero_stage": 1})
    summary = run(load_config(None, [*overrides, "loss.type=[sigmoid,sft]", "loss.weights=[1.0,0.5]", "loss.wpo=true", "loss.ld_alpha=0.5"]))
    assert summary["ref/skipped"] == 0.0
    # Step-1 loss before any update: sigmoid is ln 2 (policy == reference); sft adds 0.5 x the chosen
    # token NLL, weighted by WPO only for the preference term; so the loss is above ln 2.
    history = [json.loads(line) for line in (out / "metrics_history.jsonl").read_text().splitlines()]
    assert history[1]["train/loss"] > math.log(2)
    assert math.isfinite(summary["eval/rewards/accuracies"])


def test_stop_loss_ends_the_run_early(tiny_model_dir: str, pairs_jsonl: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      shared_caches: Path) -> None:
    from mlflow.tracking import MlflowClient

    from test_tracking import read_scalars

    out = tmp_path / "run"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    # Step 1 runs before any update, so its loss is ln 2 = 0.6931; any later improvement stops the run.
    summary = run(load_config(None, small_overrides(tiny_model_dir, pairs_jsonl, str(out), caches=shared_caches, **{
        "train.max_steps": 30, "train.stop_loss": 0.6931, "train.report_to": "[tensorboard,mlflow]"})))
    assert summary["stop_reason"] == "stop_loss"
    # Tracking: the MLflow run has every logged step's train loss and the summary, and is FINISHED;
    # TensorBoard holds each logged step once (the live events were rewritten from the history).
    history = [json.loads(line) for line in (out / "metrics_history.jsonl").read_text().splitlines()]
    logged = {int(row["step"]): row["train/loss"] for row in history if "train/loss" in row}
    client = MlflowClient((tmp_path / "mlruns").as_uri())
    mlflow_run = client.get_run(summary["mlflow_run_id"])
    assert mlflow_run.info.status == "FINISHED" and mlflow_run.data.params["train.stop_loss"] == "0.6931"
    assert {m.step: m.value for m in client.get_metric_history(mlflow_run.info.run_id, "train/loss")} == pytest.approx(logged)
    assert mlflow_run.data.metrics["final/train/steps"] == summary["train/steps"]
    scalars = read_scalars(out / "tensorboard")
    assert {step: v for (tag, step), v in scalars.items() if tag == "train/loss"} == pytest.approx(logged)
    assert 2 <= summary["train/steps"] < 30
    assert (out / "model").exists()


def test_non_finite_loss_stops_without_a_model(tiny_model_dir: str, pairs_jsonl: str, tmp_path: Path, shared_caches: Path) -> None:
    from dpo_ray.train.stopping import TrainingError

    out = tmp_path / "run"
    cfg = load_config(None, small_overrides(tiny_model_dir, pairs_jsonl, str(out), caches=shared_caches, **{
        "train.max_steps": 6, "train.learning_rate": 1e30, "train.gradient_clipping": 0.0}))
    with pytest.raises(TrainingError, match=r"training stopped at step \d+: the loss or gradient norm is not finite"):
        run(cfg)
    assert not (out / "model").exists() and not (out / "metrics.json").exists()
    assert (out / "metrics_history.jsonl").exists()
    # The same run with nonfinite=skip finishes, counts the skipped updates and exports finite weights.
    skip = tmp_path / "skip"
    summary = run(load_config(None, [*small_overrides(tiny_model_dir, pairs_jsonl, str(skip), caches=shared_caches, **{
        "train.max_steps": 6, "train.learning_rate": 1e30, "train.gradient_clipping": 0.0}), "train.nonfinite=skip"]))
    assert summary["train/skipped_steps"] >= 1 and summary["stop_reason"] == "max_steps"
    model = AutoModelForCausalLM.from_pretrained(skip / "model")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _fault_overrides(model_dir: str, data: str, out: Path, caches: Path, **extra: object) -> list[str]:
    return small_overrides(model_dir, data, str(out), caches=caches, **{
        "train.max_steps": 6, "train.checkpoint_every": 2, "train.lr_scheduler": "constant", "train.eval_every": 3,
        **extra})


def _history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics_history.jsonl").read_text().splitlines()]


@pytest.mark.slow  # four runs
def test_killed_worker_and_resumed_run_match_an_uninterrupted_run(tiny_model_dir: str, pairs_jsonl: str, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch, shared_caches: Path) -> None:
    from ray.train import TrainingFailedError

    clean = run(load_config(None, _fault_overrides(tiny_model_dir, pairs_jsonl, tmp_path / "clean", shared_caches)))

    # A worker process dies at step 3 (after the step-2 checkpoint); Ray replaces the group, which
    # resumes from the checkpoint and replays steps 3.. on exactly the same pairs.
    monkeypatch.setenv(FAULTS_ENV, json.dumps({"train_crash_at_step": 3, "train_marker": str(tmp_path / "crashed-1")}))
    faulted = run(load_config(None, _fault_overrides(tiny_model_dir, pairs_jsonl, tmp_path / "fault", shared_caches, **{"train.max_failures": 1})))
    assert (tmp_path / "crashed-1").exists()
    for key in ("train/steps", "train/pairs_seen", "eval/num_pairs"):
        assert faulted[key] == clean[key], key
    assert faulted["train/loss"] == pytest.approx(clean["train/loss"], abs=1e-5)
    assert faulted["eval/loss"] == pytest.approx(clean["eval/loss"], abs=1e-5)
    assert [h["step"] for h in _history(tmp_path / "fault")] == [h["step"] for h in _history(tmp_path / "clean")]

    # The same crash without restarts stops the run; train.resume_from continues it to the end.
    with pytest.raises(TrainingFailedError):
        monkeypatch.setenv(FAULTS_ENV, json.dumps({"train_crash_at_step": 3, "train_marker": str(tmp_path / "crashed-2")}))
        run(load_config(None, _fault_overrides(tiny_model_dir, pairs_jsonl, tmp_path / "stopped", shared_caches)))
    monkeypatch.delenv(FAULTS_ENV)
    assert not (tmp_path / "stopped" / "model").exists()
    resumed = run(load_config(None, _fault_overrides(tiny_model_dir, pairs_jsonl, tmp_path / "resumed", shared_caches,
                                                     **{"train.resume_from": str(tmp_path / "stopped")})))
    assert resumed["train/steps"] == clean["train/steps"] and resumed["train/pairs_seen"] == clean["train/pairs_seen"]
    assert resumed["train/loss"] == pytest.approx(clean["train/loss"], abs=1e-5)
    assert resumed["eval/loss"] == pytest.approx(clean["eval/loss"], abs=1e-5)


def test_one_and_two_workers_follow_the_same_trajectory(tiny_model_dir: str, pairs_jsonl: str, tmp_path: Path, shared_caches: Path) -> None:
    # batch 16 = micro 8 x 2 workers x 1 step = micro 8 x 1 worker x 2 accumulation steps: the same
    # pairs in every global batch (dpo_ray.train.order.micro_batches), so the same losses. ZeRO-3: the
    # model loads partitioned (dpo_ray.modeling.load_model_partitioned) over 1 and over 2 ranks.
    runs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        runs[workers] = run(load_config(None, small_overrides(tiny_model_dir, pairs_jsonl, str(out), caches=shared_caches, **{
            "train.num_workers": workers, "train.micro_batch_size": 8, "train.eval_every": 4, "train.zero_stage": 3})))
    assert runs[1]["initial_eval/loss"] == pytest.approx(math.log(2), abs=1e-4)  # step 0: policy == cached reference
    assert runs[2]["initial_eval/loss"] == pytest.approx(math.log(2), abs=1e-4)
    h1, h2 = _history(tmp_path / "w1"), _history(tmp_path / "w2")
    for a, b in zip(h1, h2):
        if "train/loss" in a:
            assert a["train/loss"] == pytest.approx(b["train/loss"], abs=1e-5), a["step"]
    assert runs[1]["eval/loss"] == pytest.approx(runs[2]["eval/loss"], abs=1e-5)
    # Each worker read only its own lanes: half the rows and token ids one worker read (train/order.py).
    one, two = ([runs[w][f"data/{k}_read_per_worker"] for k in ("rows", "tokens")] for w in (1, 2))
    assert two[0][0] == two[0][1] and two[0][0] + two[0][1] == one[0][0] >= runs[1]["train/pairs_seen"]
    assert two[1][0] + two[1][1] == one[1][0] and 0 < two[1][0] < one[1][0]
    assert_finished_run(tmp_path / "w2", runs[2], tiny_model_dir, zero_stage=3, eval_steps=[0, 4])  # as test_pipeline_end_to_end


@pytest.mark.slow  # three runs
@pytest.mark.parametrize(("export", "zero_stage"), [("merged", 2), ("adapter", 2), ("merged", 3)])
def test_lora_run_exports_a_model_that_generates(export: str, zero_stage: int, tiny_model_dir: str, pairs_jsonl: str, tmp_path: Path,
                                                 shared_caches: Path) -> None:
    out = tmp_path / "lora"
    summary = run(load_config(None, [*small_overrides(tiny_model_dir, pairs_jsonl, str(out), caches=shared_caches, **{"train.learning_rate": 5e-3, "train.zero_stage": zero_stage}),
                                     "model.lora.r=4", "model.lora.target_modules=[q_proj,v_proj]", f"model.lora.export={export}"]))
    assert abs(summary["initial_eval/loss"] - math.log(2)) < 1e-4  # the frozen base is the reference
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    if export == "merged":
        model = AutoModelForCausalLM.from_pretrained(out / "model")
        trained, start = model.state_dict(), base.state_dict()
        changed = {k for k in start if not torch.equal(trained[k], start[k])}
        assert changed and all("q_proj" in k or "v_proj" in k for k in changed)  # only adapted weights moved
    else:
        from peft import PeftModel

        assert (out / "model" / "adapter_config.json").exists()
        model = PeftModel.from_pretrained(base, out / "model")
    card = (out / "model" / "README.md").read_text()  # ours, in place of PEFT's template card for an adapter
    assert f"library_name: {'peft' if export == 'adapter' else 'transformers'}\n" in card and "LoRA r 4, alpha 16, on q_proj, v_proj" in card
    ids = torch.tensor([[1, 20, 21, 22]])
    generated = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert generated.shape == (1, 9)


def _split_sources(pairs_jsonl: str, tmp_path: Path) -> tuple[Path, Path]:
    lines = Path(pairs_jsonl).read_text().splitlines(keepends=True)
    big, small = tmp_path / "big.jsonl", tmp_path / "small.jsonl"
    big.write_text("".join(lines[:300]))
    small.write_text("".join(lines[300:]))
    return big, small


def test_mixture_weights_and_per_source_eval(tiny_model_dir: str, pairs_jsonl: str, tmp_path: Path) -> None:
    from dpo_ray.config_load import resolve_paths
    from dpo_ray.run import prepare_datasets

    big, small = _split_sources(pairs_jsonl, tmp_path)
    out = tmp_path / "run"
    sources = f"[{{name: big, path: {big}, weight: 1}}, {{name: small, path: {small}, weight: 3}}]"
    cfg = load_config(None, small_overrides(tiny_model_dir, "unused", str(out), **{"data.sources": sources}))
    prepared = prepare_datasets(resolve_paths(cfg))
    s = prepared.stats.metrics()
    train_big, train_small = s["data/sources/big/train_pairs"], s["data/sources/small/train_pairs"]
    assert train_big + train_small == s["data/train_pairs"] and train_big > 2 * train_small
    mixture = prepared.train.to_pandas()["mixture"]
    # An epoch has as many pairs as both sources; small fills 3/4 of it (each pair ~3 times), big 1/4.
    assert abs(len(mixture) - s["data/train_pairs"]) <= 0.1 * s["data/train_pairs"]
    assert (mixture == 1).mean() == pytest.approx(0.75, abs=0.06)
    assert s["data/epoch_train_pairs"] == len(mixture)

    summary = run(cfg)
    for name in ("big", "small"):
        assert math.isfinite(summary[f"eval/{name}/rewards/accuracies"])
        assert summary[f"eval/{name}/num_pairs"] == s[f"data/sources/{name}/eval_pairs"] > 0
    assert summary["eval/big/num_pairs"] + summary["eval/small/num_pairs"] == summary["eval/num_pairs"]


def test_explicit_eval_source(tiny_model_dir: str, pairs_jsonl: str, tmp_path: Path) -> None:
    from dpo_ray.config_load import resolve_paths
    from dpo_ray.run import prepare_datasets

    big, small = _split_sources(pairs_jsonl, tmp_path)
    sources = f"[{{name: train, path: {big}}}, {{name: held, path: {small}, eval: true}}]"
    cfg = load_config(None, small_overrides(tiny_model_dir, "unused", str(tmp_path / "run"), **{"data.sources": sources}))
    prepared = prepare_datasets(resolve_paths(cfg))
    assert set(prepared.train.to_pandas()["mixture"]) == {0} and set(prepared.eval.to_pandas()["mixture"]) == {1}
    s = prepared.stats.metrics()
    assert s["data/sources/held/train_pairs"] == 0 and s["data/sources/train/eval_pairs"] == 0
    assert s["data/eval_pairs"] == s["data/sources/held/eval_pairs"] > 90


def test_output_dir_on_a_uri_is_staged_and_uploaded(tiny_model_dir: str, pairs_jsonl: str, tmp_path: Path) -> None:
    """output_dir=s3://... / gs://... take the same path as this file:// URI (pyarrow's filesystems)."""
    import tempfile

    from dpo_ray.config import ConfigError

    bucket = tmp_path / "bucket"
    uri = (bucket / "run").as_uri()
    stages = lambda: set(Path(tempfile.gettempdir()).glob("dpo_ray-output-*"))  # noqa: E731
    before = stages()
    summary = run(load_config(None, small_overrides(tiny_model_dir, pairs_jsonl, uri, **{"train.checkpoint_every": 2})))
    remote = bucket / "run"
    assert summary["model_dir"] == f"{uri}/model"
    assert (remote / "model" / "model.safetensors").exists() and (remote / "model" / "tokenizer.json").exists()
    assert json.loads((remote / "metrics.json").read_text())["train/steps"] == 4
    assert {"data_report.json", "config.yaml", "metrics_history.jsonl", "curves.png"} <= {p.name for p in remote.iterdir()}
    assert load_config(remote / "config.yaml").output_dir == uri
    assert list(remote.glob("ray/*/checkpoint_*"))  # Ray Train wrote its checkpoints to the URI itself
    assert (bucket / "run-refcache").is_dir() and (bucket / "run-datacache").is_dir()  # caches on the URI too
    assert stages() == before  # the local staging folder is gone
    with pytest.raises(ConfigError, match="already holds a finished run"):
        run(load_config(None, small_overrides(tiny_model_dir, pairs_jsonl, uri)))
