"""Bad input ends with one line that names the file, row or key and what to do: never a traceback,
never a model/ that looks finished, and nothing the user had is changed.

One table drives the entry scripts (pipelines/dpo.py, precompute_ref.py, sweep.py) in a subprocess:
each case asserts the exit code, the exact first words of the line, no traceback and no model/.
The cases caught before Ray starts (the preflight, config loading) also assert that stderr holds
that line alone and that no file under the test's folder changed; they take a second or two each.
The cases that need Ray (a bad row; Ctrl+C, then damaged caches on the resumed run) share runs.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from _cluster import ray_env
from conftest import REPO, small_overrides
from dpo_ray.train.checkpoint import latest_checkpoint
from dpo_ray.store import CacheStore

SCRIPTS = {name: str(REPO / "pipelines" / f"{name}.py") for name in ("dpo", "precompute_ref", "sweep")}
E = "dpo_ray: error: "
Setup = Callable[[Path, str, str], tuple[list[str], str]]
"""(tmp_path, tiny model dir, pairs.jsonl) -> (the script's arguments, the first words of the line)."""


@dataclass(frozen=True)
class Case:
    setup: Setup
    script: str = "dpo"
    env: dict[str, str] = field(default_factory=dict)
    before_ray: bool = True
    """Caught before Ray starts: the line is all of stderr and no file under tmp_path changes."""
    contains: str = ""
    """Also somewhere in the line."""
    exact: bool = False
    """The first words are the whole line."""


def _args(model: str, data: str, tmp: Path, **extra: object) -> list[str]:
    return small_overrides(model, data, str(tmp / "run"), **extra)


def _model(tmp: Path, model: str, damage: Callable[[Path], object]) -> str:
    """A copy of the tiny model with ``damage`` done to it."""
    copy = tmp / "model"
    shutil.copytree(model, copy)
    damage(copy)
    return str(copy)


def _edit_json(path: Path, drop: tuple[str, ...]) -> None:
    content = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in content.items() if k not in drop}))


def _two_shards(d: Path) -> None:
    (d / "model.safetensors").rename(d / "model-00001-of-00002.safetensors")
    shards = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": shards}))


def _bad_model(damage: Callable[[Path], object], words: str) -> Setup:
    def setup(tmp: Path, model: str, data: str) -> tuple[list[str], str]:
        bad = _model(tmp, model, damage)
        return _args(bad, data, tmp), f"{E}model.name_or_path={bad}: {words}"
    return setup


def _file(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def _finished_run(tmp: Path) -> Path:
    (tmp / "run" / "model").mkdir(parents=True)
    (tmp / "run" / "model" / "keep.txt").write_text("mine")
    return tmp / "run"


def _sweep(model: str, data: str, tmp: Path, *extra: str) -> list[str]:
    return ["--config", str(REPO / "pipelines" / "configs" / "sweep.yaml"),
            *_args(model, data, tmp, **{"train.num_workers": 1}), *extra]


CASES: dict[str, Case] = {
    # config file, keys and values (config.py)
    "unknown_key": Case(lambda t, m, d: (_args(m, d, t, **{"train.max_stepz": 3}),
                                         f"{E}unknown config key 'train.max_stepz' (known in train: learning_rate, "), contains=" max_steps, "),
    "config_file_missing": Case(lambda t, m, d: (["--config", str(t / "nope.yaml")], f"{E}config file {t / 'nope.yaml'} does not exist")),
    "config_not_yaml": Case(lambda t, m, d: (["--config", str(_file(t, "bad.yaml", "train:\n  max_steps: [1, 2\nloss: {}\n"))],
                                             f"{E}{t / 'bad.yaml'}: not valid YAML (expected ',' or ']', but got ':' at line 3, column 5)")),
    "override_not_yaml": Case(lambda t, m, d: ([*_args(m, d, t), "loss.beta=[1,"], f"{E}override 'loss.beta=[1,': the value is not valid YAML (")),
    "batch_not_divisible": Case(lambda t, m, d: (_args(m, d, t, **{"train.batch_size": 18}),
                                                 f"{E}train.batch_size=18 is not a multiple of train.micro_batch_size x train.num_workers = 8")),
    # data paths
    "data_path_missing": Case(lambda t, m, d: (_args(m, str(t / "nope.jsonl"), t), f"{E}data.path {t / 'nope.jsonl'}: no such file or directory")),
    "data_glob_empty": Case(lambda t, m, d: (_args(m, str(t / "*.parquet"), t), f"{E}data.path {t / '*.parquet'}: the glob matches no files")),
    "data_source_missing": Case(lambda t, m, d: (
        _args(m, d, t, **{"data.sources": f"[{{name: a, path: {d}}}, {{name: b, path: {t / 'b.jsonl'}}}]"}),
        f"{E}data.sources b: path {t / 'b.jsonl'}: no such file or directory")),
    # the model and its tokenizer
    "model_missing": Case(lambda t, m, d: (_args(str(t / "nope"), d, t), f"{E}model.name_or_path={t / 'nope'}: no such directory; ")),
    "model_is_a_file": Case(lambda t, m, d: (_args(d, d, t), f"{E}model.name_or_path={d}: a file, not a directory; ")),
    "model_without_config": Case(_bad_model(lambda p: (p / "config.json").unlink(), "no config.json in it; ")),
    "model_config_not_json": Case(_bad_model(lambda p: (p / "config.json").write_text('{"model_type": "lla'),
                                             "config.json is not valid JSON (")),
    "model_without_tokenizer": Case(_bad_model(lambda p: (p / "tokenizer.json").unlink(), "no tokenizer files (one of tokenizer.json, ")),
    "model_without_weights": Case(_bad_model(lambda p: (p / "model.safetensors").unlink(), "no weights (*.safetensors or pytorch_model.bin); ")),
    "model_weights_truncated": Case(_bad_model(
        lambda p: (p / "model.safetensors").write_bytes((p / "model.safetensors").read_bytes()[:5000]),
        "model.safetensors is damaged (5000 bytes where its header describes ")),
    "model_shard_missing": Case(_bad_model(_two_shards, "model.safetensors.index.json names model-00002-of-00002.safetensors, which is missing; ")),
    "tokenizer_without_eos_or_pad": Case(_bad_model(lambda p: _edit_json(p / "tokenizer_config.json", ("eos_token", "pad_token")),
                                                    "the tokenizer has no EOS token; ")),
    "hub_model_offline_not_cached": Case(
        lambda t, m, d: (_args("no-such-org/no-such-model", d, t),
                         f"{E}model.name_or_path=no-such-org/no-such-model: HF_HUB_OFFLINE is set and no-such-org/no-such-model@main is not in the hub cache"),
        env={"HF_HUB_OFFLINE": "1"}),
    # output_dir, caches, resume
    "output_dir_is_a_file": Case(lambda t, m, d: (small_overrides(m, d, d), f"{E}output_dir {d} is a file, not a directory; ")),
    "output_dir_holds_a_finished_run": Case(lambda t, m, d: (
        _args(m, d, t, overwrite_output_dir="false"), f"{E}output_dir {_finished_run(t)} already holds a finished run (model/); ")),
    "cache_dir_is_a_file": Case(lambda t, m, d: (_args(m, d, t, **{"reference.cache_dir": d}), f"{E}reference.cache_dir {d} is a file, not a directory; ")),
    "resume_from_missing": Case(lambda t, m, d: (_args(m, d, t, **{"train.resume_from": t / "old"}), f"{E}train.resume_from={t / 'old'}: no such directory; ")),
    "resume_from_without_checkpoint": Case(lambda t, m, d: (_args(m, d, t, **{"train.resume_from": t}), f"{E}train.resume_from={t}: no checkpoint found ")),
    # the other entry scripts share the preflight
    "precompute_model_missing": Case(lambda t, m, d: (_args(str(t / "nope"), d, t), f"{E}model.name_or_path={t / 'nope'}: no such directory; "),
                                     script="precompute_ref"),
    "sweep_data_missing": Case(lambda t, m, d: (_sweep(m, str(t / "nope.jsonl"), t), f"{E}data.path {t / 'nope.jsonl'}: no such file or directory"),
                               script="sweep"),
    "sweep_searched_model_missing": Case(lambda t, m, d: (
        _sweep(m, d, t, f"tune.search_space.model.name_or_path={{choice: [{m}, {t / 'nope'}]}}"),
        f"{E}tune.search_space.model.name_or_path: value '{t / 'nope'}': model.name_or_path={t / 'nope'}: no such directory; "), script="sweep"),
    # needs Ray: the row is found by the data stage
    "bad_row": Case(lambda t, m, d: (
        _args(m, str(_file(t, "bad.jsonl", '{"prompt": "p", "chosen": "c", "rejected": "r"}\n{"prompt": "p", "chosen": 7, "rejected": "r"}\n')), t),
        f"{E}1 of 2 rows dropped (50.0% > data.max_drop_fraction=0.05): non_string 1 (e.g. {t / 'bad.jsonl'}:2: 'chosen' is int, "
        f"expected a string); fix those rows, or raise data.max_drop_fraction to train on the rest; see {t / 'run' / 'data_report.json'}"),
        before_ray=False, exact=True),
}


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def _marks(case: Case) -> list[pytest.MarkDecorator]:
    return [] if case.before_ray else [pytest.mark.e2e]


@pytest.mark.parametrize("name", [pytest.param(n, marks=_marks(c)) for n, c in CASES.items()])
def test_bad_input_is_one_line(name: str, tmp_path: Path, tiny_model_dir: str, pairs_jsonl: str) -> None:
    case = CASES[name]
    args, first_words = case.setup(tmp_path, tiny_model_dir, pairs_jsonl)
    before = _tree(tmp_path)
    env = {**ray_env(), "HF_HUB_CACHE": str(tmp_path.parent / "empty-hub-cache"), **case.env}
    proc = subprocess.run([sys.executable, SCRIPTS[case.script], *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60 if case.before_ray else 600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("dpo_ray:")]
    assert len(lines) == 1 and lines[0].startswith(first_words), proc.stderr[-3000:]
    assert case.contains in lines[0] and (lines[0] == first_words or not case.exact)
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "model").exists() or name == "output_dir_holds_a_finished_run"
    if case.before_ray:
        assert proc.stderr.strip() == lines[0]  # nothing else: Ray never started
        assert _tree(tmp_path) == before  # nothing written, nothing the user had touched (keep.txt)


def _first_file(manifest: dict) -> str:
    return f"{manifest['data_dir']}/{manifest['files'][0]['path']}"


def _entry(root: str) -> tuple[CacheStore, str, dict]:
    store = CacheStore(root)
    (key,) = [p.name for p in Path(root).iterdir()]
    return store, key, store.read_manifest(key)


@pytest.mark.e2e
@pytest.mark.slow
def test_ctrl_c_names_the_step_and_resume_survives_damaged_caches(tmp_path: Path, tiny_model_dir: str, pairs_jsonl: str) -> None:
    out = tmp_path / "run"
    args = small_overrides(tiny_model_dir, pairs_jsonl, str(out), **{
        "train.max_steps": 60, "train.checkpoint_every": 2, "train.eval_every": 1000})
    proc = subprocess.Popen([sys.executable, SCRIPTS["dpo"], *args], cwd=REPO, env=ray_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    streams: dict[str, list[str]] = {"out": [], "err": []}
    readers = [threading.Thread(target=lambda s=s, lines=lines: lines.extend(s), daemon=True)
               for s, lines in ((proc.stdout, streams["out"]), (proc.stderr, streams["err"]))]
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + 600
    while latest_checkpoint(out) is None:  # training is under way, a checkpoint registered
        assert proc.poll() is None and time.monotonic() < deadline, "".join(streams["err"])[-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # Ctrl+C
    proc.wait(timeout=300)
    for reader in readers:
        reader.join()
    stderr = "".join(streams["err"])
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and not (out / "model").exists()
    last = stderr.strip().splitlines()[-1]  # after Ray's own shutdown lines
    resume = f"python pipelines/dpo.py --config {out}/config.yaml train.resume_from={out}"
    match = re.fullmatch(r"dpo_ray: interrupted at step (\d+) of 60; no model was written; resume with: (.*)", last)
    assert match and 2 <= int(match[1]) < 60 and match[2] == resume, last

    # Damage both committed cache entries: a truncated reference part, a deleted tokenized part.
    ref_store, ref_key, ref_manifest = _entry(f"{out}-refcache")
    tok_store, tok_key, tok_manifest = _entry(f"{out}-datacache")
    part = Path(ref_store.data_files(ref_key, ref_manifest)[0])
    part.write_bytes(part.read_bytes()[:100])
    Path(tok_store.data_files(tok_key, tok_manifest)[0]).unlink()
    cmd = shlex.split(resume)
    again = subprocess.run([sys.executable, *cmd[1:]], cwd=REPO, env=ray_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Traceback" not in again.stderr
    assert [line for line in again.stderr.splitlines() if line.startswith("cache:")] == [
        f"cache: entry {tok_key} at {tok_store.entry_uri(tok_key)} is damaged ({_first_file(tok_manifest)} is missing); recomputing",
        f"cache: entry {ref_key} at {ref_store.entry_uri(ref_key)} is damaged ({_first_file(ref_manifest)} is 100 bytes, "
        f"the manifest says {ref_manifest['files'][0]['size']}); recomputing",
    ]
    assert (out / "model" / "model.safetensors").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ref/cache_hit"] == 0.0 and metrics["data/tokenize_cache_hit"] == 0.0 and metrics["train/steps"] == 60
    steps = [int(n) for n in re.findall(r"\[dpo_ray\] step (\d+)/60 ", again.stdout + again.stderr)]
    assert min(steps) > 2 and max(steps) == 60  # resumed from a checkpoint at step >= 2: steps 1-2 did not run again
    for store, key, old in ((ref_store, ref_key, ref_manifest), (tok_store, tok_key, tok_manifest)):
        fresh = store.read_manifest(key)  # a fresh entry was committed: the next run hits it
        assert fresh["data_dir"] != old["data_dir"] and store.check(key, fresh) is None
