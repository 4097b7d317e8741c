"""Shared fixtures: a tiny model saved to disk (loaded via from_pretrained, as a hub id is) and data; the
tiers: a test's folder (tests/unit|ray|e2e) gives its marker, and a unit-only session fails if Ray was imported."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from _pytest.mark.expression import Expression  # pytest's own -m parser (private; pytest is pinned >= 8 in the dev extra)

from dpo_ray.toy import build_tiny_model, make_preference_rows

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
TIERS = ("unit", "ray", "e2e")
# Tests in tests/<tier>/ import the helpers beside this file (conftest, _cluster, _chat_families) by name.
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
_UNIT_ONLY = pytest.StashKey[bool]()


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Under `-m unit` leave tests/ray and tests/e2e uncollected: importing them loads Ray (and costs seconds)."""
    if collection_path.parent != TESTS or collection_path.name not in TIERS or not config.option.markexpr:
        return None
    # pytest's own -m parser (what deselection evaluates); a tier folder's tests carry its marker, maybe `slow`
    expr = Expression.compile(config.option.markexpr)
    tier = collection_path.name
    return not any(expr.evaluate(lambda name, /, **kw: name in marks) for marks in ({tier}, {tier, "slow"})) or None


@pytest.hookimpl(tryfirst=True)  # before -m deselects: the folder's marker must be there to select on
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = item.path.relative_to(TESTS).parts
        if len(parts) > 1 and parts[0] in TIERS and not any(item.get_closest_marker(t) for t in TIERS):
            item.add_marker(parts[0])


@pytest.hookimpl(trylast=True)  # after -m deselected: `items` is what will run
def pytest_collection_finish(session: pytest.Session) -> None:
    unit_only = bool(session.items) and all(i.get_closest_marker("unit") for i in session.items)
    session.config.stash[_UNIT_ONLY] = unit_only
    if unit_only and "ray" in sys.modules:
        raise pytest.UsageError("the unit tier imported Ray while collecting: a tests/unit module (or what it imports) loads ray")


@pytest.fixture(autouse=True)
def _unit_tier_loads_no_ray(request: pytest.FixtureRequest) -> Iterator[None]:
    """In a unit-only session (`-m unit`, tests/unit), fail the test during which Ray got imported."""
    before = "ray" in sys.modules
    yield
    if request.config.stash.get(_UNIT_ONLY, False) and not before:
        assert "ray" not in sys.modules, f"{request.node.nodeid} imported Ray: a unit test imports no Ray (move it to tests/ray/)"


@pytest.fixture(scope="session")
def pair_rows() -> list[dict[str, str]]:
    return make_preference_rows(400, seed=1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, pair_rows: list[dict[str, str]]) -> str:
    out = tmp_path_factory.mktemp("tiny-model")
    build_tiny_model(out, pair_rows, hidden_size=32, num_layers=2, num_heads=2, vocab_size=320, seed=3)
    return str(out)


@pytest.fixture(scope="session")
def pairs_jsonl(tmp_path_factory: pytest.TempPathFactory, pair_rows: list[dict[str, str]]) -> str:
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in pair_rows))
    return str(path)


@pytest.fixture(scope="session")
def shared_caches(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tokenized and one reference cache for a session's runs (small_overrides(caches=...)): the
    first run on a model and data fills them, later ones read them, as a user's repeated runs do. The
    caches' own miss, hit and damage behaviour is tested with fresh ones (test_reference_cache, test_bad_input)."""
    return tmp_path_factory.mktemp("shared-caches")


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir: str):
    from dpo_ray.modeling import load_tokenizer

    return load_tokenizer(tiny_model_dir)


def small_overrides(model_dir: str, data_path: str, output_dir: str, *, caches: str | Path | None = None,
                    **extra: object) -> list[str]:
    """Dotted overrides for a short CPU run of the pipeline. Its caches sit next to output_dir, or
    under ``caches`` (shared_caches): runs on the same model and pairs then tokenize and score once."""
    base = {
        "model.name_or_path": model_dir, "data.path": data_path, "data.max_length": 48,
        "data.eval_fraction": 0.15, "reference.batch_size": 32, "train.learning_rate": 1e-3,
        "train.max_steps": 4, "train.batch_size": 16, "train.micro_batch_size": 4,
        "train.num_workers": 2, "train.eval_every": 2, "train.logging_steps": 1,
        "output_dir": output_dir, "reference.cache_dir": f"{output_dir}-refcache",
        "data.cache_dir": f"{output_dir}-datacache",
    }
    if caches is not None:
        base |= {"reference.cache_dir": f"{caches}/reference", "data.cache_dir": f"{caches}/tokenized"}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def progress_steps(output: str) -> list[str]:
    """The progress lines of a run's output, in order, cut before their metrics."""
    return [line.split(" loss ")[0] + " " for line in output.splitlines() if line.startswith("[dpo_ray] ")]


SHORT_RUN_PROGRESS = ["[dpo_ray] eval at step 0/4 ", "[dpo_ray] step 2/4 ", "[dpo_ray] eval at step 2/4 ",
                      "[dpo_ray] step 4/4 ", "[dpo_ray] eval at step 4/4 "]
"""A 4-step run logging every 2 steps and evaluating at 0, 2, 4: each line once, in this order."""


SWEEP_SPACE = {"loss.beta": {"loguniform": [0.01, 1.0]}, "train.learning_rate": {"loguniform": [1e-4, 3e-3]}}


def sweep_file(tmp_path: Path, **tune: object) -> str:
    """A sweep YAML searching beta and learning rate, with ``tune`` settings added."""
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"tune": {"search_space": SWEEP_SPACE, **tune}}))
    return str(path)
