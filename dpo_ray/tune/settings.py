"""Sweep settings: the `tune:` group of a sweep YAML and its search space. Pure ring: no Ray import.

A sweep file is a run config plus a `tune:` group. The search space maps dotted config keys to a
domain, e.g. ``loss.beta: {loguniform: [0.01, 1.0]}``; every key is checked against the config (a
value at each end of a range, every choice) before a trial starts.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from dpo_ray.config import Config, ConfigError
from dpo_ray.config_load import build_group, from_dict, parse_overrides, read_yaml, set_dotted

DOMAINS = ("loguniform", "uniform", "randint", "choice", "grid")
"""loguniform/uniform: [low, high]; randint: [low, high] inclusive; choice/grid: a list of values."""
BETA_SCALED = ("eval/loss", "eval/rewards/margins", "eval/rewards/chosen", "eval/rewards/rejected")
"""Eval metrics whose scale moves with beta (rewards are beta x log-ratio; the loss is a function of them)."""


@dataclass(frozen=True)
class TuneSettings:
    search_space: dict = field(default_factory=dict)
    """Dotted config key -> domain ({loguniform: [a, b]}, {uniform: [a, b]}, {randint: [a, b]},
    {choice: [...]}, {grid: [...]})."""
    searcher: Literal["grid", "random", "optuna"] = "random"
    """grid: every combination of grid/choice values; random: independent samples; optuna: TPE."""
    num_samples: int | None = None
    """Trials (random, optuna; unset: 8) or repeats of the whole grid (grid; unset: 1)."""
    max_concurrent_trials: int | None = None
    """Trials running at once; unset: as many as the cluster's CPUs (GPUs) hold side by side."""
    metric: str = "eval/rewards/accuracies"
    """The objective: a held-out eval/ metric, read at each evaluation and at the end."""
    mode: Literal["max", "min"] | None = None
    """Unset: min for a loss metric, else max."""
    scheduler: Literal["asha", "none"] = "asha"
    """asha: stop trials that trail at each evaluation (Async Successive Halving)."""
    grace_period: int = 2
    """Evaluations (step 0's included) a trial always gets before ASHA may stop it."""
    reduction_factor: int = 2
    """ASHA keeps the best 1/reduction_factor of the trials at each rung."""
    seed: int = 0
    """Seed of the random and Optuna searchers."""
    keep_trial_models: bool = False
    """Keep every trial's exported model (trials/<id>/model); by default only best_model/ is kept."""

    def __post_init__(self) -> None:
        if not self.metric.startswith("eval/"):
            raise ConfigError(f"tune.metric={self.metric!r}: must be a held-out eval/ metric, e.g. eval/rewards/accuracies")
        if self.num_samples is not None and self.num_samples < 1:
            raise ConfigError(f"tune.num_samples={self.num_samples}: must be >= 1")
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < 1:
            raise ConfigError(f"tune.max_concurrent_trials={self.max_concurrent_trials}: must be >= 1")
        if self.grace_period < 1 or self.reduction_factor < 2:
            raise ConfigError("tune.grace_period must be >= 1 and tune.reduction_factor >= 2")
        if not self.search_space:
            raise ConfigError("tune.search_space is empty: add e.g. loss.beta: {loguniform: [0.01, 1.0]}")
        for key, spec in self.search_space.items():
            _check_domain(key, spec)
        kinds = {next(iter(spec)) for spec in self.search_space.values()}
        if self.searcher == "grid" and kinds - {"grid", "choice"}:
            raise ConfigError("tune.searcher=grid: every tune.search_space entry must be {grid: [...]} or {choice: [...]}")
        if self.searcher == "optuna" and "grid" in kinds:
            raise ConfigError("tune.searcher=optuna cannot search a {grid: [...]}; use {choice: [...]} or tune.searcher=grid")

    def resolved_mode(self) -> str:
        return self.mode or ("min" if self.metric.endswith("loss") else "max")

    def samples(self) -> int:
        return self.num_samples or (1 if self.searcher == "grid" else 8)

    def trial_plan(self) -> str:
        """How many trials the sweep runs, and why: the line it prints before the first one."""
        if self.searcher != "grid":
            why = f"tune.num_samples={self.num_samples}" if self.num_samples else "tune.num_samples unset: 8"
            return f"{self.samples()} trials, {self.searcher} search ({why})"
        sizes = [len(next(iter(spec.values()))) for spec in self.search_space.values()]
        points = math.prod(sizes)
        repeats = (f"each {self.num_samples} times (tune.num_samples={self.num_samples})" if self.num_samples
                   else "each once (tune.num_samples=N repeats the grid)")
        return f"{points * self.samples()} trials: a grid of {' x '.join(map(str, sizes))} = {points} points, {repeats}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_domain(key: str, spec: Any) -> None:
    where = f"tune.search_space.{key}"
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DOMAINS:
        raise ConfigError(f"{where}={spec!r}: expected one of {', '.join('{' + d + ': [...]}' for d in DOMAINS)}")
    kind, values = next(iter(spec.items()))
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: {kind} needs a non-empty list")
    if kind in ("loguniform", "uniform", "randint"):
        numbers = [float(v) if isinstance(v, str) else v for v in values] if kind != "randint" else values
        if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
            raise ConfigError(f"{where}: {kind} needs [low, high] numbers, got {values!r}")
        if kind == "randint" and not all(isinstance(v, int) for v in values):
            raise ConfigError(f"{where}: randint needs integer bounds, got {values!r}")
        low, high = numbers
        if not low < high or (kind == "loguniform" and low <= 0):
            raise ConfigError(f"{where}: needs low < high{' and low > 0' if kind == 'loguniform' else ''}, got {values!r}")


def domain_values(spec: dict[str, list]) -> list[Any]:
    """The values a check tries for a domain: both ends of a range, every listed value."""
    kind, values = next(iter(spec.items()))
    if kind in ("loguniform", "uniform"):
        return [float(v) for v in values]
    return list(values)


def apply_params(base: dict[str, Any], params: dict[str, Any]) -> Config:
    """The base config (plain data) with dotted ``params`` set: one trial's config, validated."""
    raw = copy.deepcopy(base)
    for key, value in params.items():
        set_dotted(raw, key, value)
    return from_dict(raw)


def load_sweep(path: str | None, overrides: list[str]) -> tuple[Config, TuneSettings]:
    """Sweep YAML + overrides -> the base run config and the tune settings, both checked.

    Overrides under ``tune.`` set sweep settings (``tune.search_space.loss.beta={grid: [0.1, 0.3]}``
    sets one domain); all others set the base config.
    """
    raw = read_yaml(path) if path else {}
    tune_raw = raw.pop("tune", None) or {}
    if not isinstance(tune_raw, dict):
        raise ConfigError(f"{path}: tune must be a mapping (search_space, searcher, num_samples, ...)")
    tune_raw = copy.deepcopy(tune_raw)
    for key, value in parse_overrides(overrides):
        if key.startswith("tune.search_space."):
            tune_raw.setdefault("search_space", {})[key.removeprefix("tune.search_space.")] = value
        elif key.startswith("tune."):
            set_dotted(tune_raw, key.removeprefix("tune."), value)
        else:
            set_dotted(raw, key, value)
    base = from_dict(raw)
    settings = build_group(TuneSettings, tune_raw, prefix="tune.")
    check_space(base, settings)
    return base, settings


def check_space(base: Config, settings: TuneSettings) -> None:
    """Every searched key and value builds a valid config; a beta-scaled objective is refused when
    the loss is searched."""
    base_raw = base.to_dict()
    for key, spec in settings.search_space.items():
        for value in domain_values(spec):
            try:
                apply_params(base_raw, {key: value})
            except ConfigError as err:
                raise ConfigError(f"tune.search_space.{key}: value {value!r} is not a valid config: {err}") from None
    searched_loss = [k for k in settings.search_space if k.startswith("loss.")]
    if settings.metric in BETA_SCALED and searched_loss:
        raise ConfigError(
            f"tune.metric={settings.metric} is not comparable across trials that change {searched_loss[0]}: its scale "
            "moves with beta (rewards are beta x log-ratio). Use eval/rewards/accuracies (the default) or eval/logps/chosen"
        )


def sort_rows(rows: list[dict[str, Any]], metric: str, mode: str) -> list[dict[str, Any]]:
    """Trials best first by ``metric``; trials without a finite value last."""
    def key(row: dict[str, Any]) -> tuple[int, float]:
        value = row.get(metric)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return (1, 0.0)
        return (0, -value if mode == "max" else value)

    return sorted(rows, key=key)
