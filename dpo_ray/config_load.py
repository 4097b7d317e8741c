"""Reading a Config: YAML files, dotted ``key=value`` overrides, type coercion, path resolution.

Unknown keys and wrong types raise ``ConfigError`` naming the key. Pure ring: no Ray import.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from dpo_ray.config import Config, ConfigError
from dpo_ray.config_check import dtype_name as dtype_name  # callers import it from here
from dpo_ray.paths import is_remote, looks_like_hub_id


def from_dict(raw: dict[str, Any]) -> Config:
    """Build a Config from nested plain data, checking every key and type."""
    return build_group(Config, raw, prefix="")


def load_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None) -> Config:
    """YAML file (optional) + dotted ``key=value`` overrides -> validated Config."""
    raw = read_yaml(path) if path is not None else {}
    for key, value in parse_overrides(overrides or []):
        set_dotted(raw, key, value)
    return from_dict(raw)


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A config file's top-level mapping (empty for an empty file)."""
    try:
        loaded = yaml.safe_load(_read_text(Path(path)))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({yaml_problem(err)}); fix the file") from err
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: top level must be a mapping of config groups")
    return loaded


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """``key=value`` strings -> (dotted key, YAML-parsed value)."""
    parsed = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}': expected key=value, e.g. loss.beta=0.05")
        try:
            parsed.append((key.strip(), yaml.safe_load(value) if value.strip() else ""))
        except yaml.YAMLError as err:
            raise ConfigError(f"override '{item}': the value is not valid YAML ({yaml_problem(err)}); "
                              "quote it (key='\"...\"') or close its brackets") from err
    return parsed


def yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one phrase: the problem and where (1-based line, column)."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark = err.problem_mark
        return f"{err.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return str(err).splitlines()[0]


def resolve_paths(config: Config) -> Config:
    """Make local paths absolute so workers with another cwd find them; hub ids stay as given."""
    def local(path: str) -> str:
        if not is_remote(path) and (os.path.exists(path) or not looks_like_hub_id(path)):
            return os.path.abspath(path)
        return path

    model_path = config.model.name_or_path
    if Path(model_path).exists():
        model_path = str(Path(model_path).resolve())
    sources = [dataclasses.replace(s, path=local(s.path)) for s in config.data.sources]
    output_dir = config.output_dir if is_remote(config.output_dir) else os.path.abspath(config.output_dir)
    ref_path = config.reference.name_or_path
    online = config.online
    return dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, name_or_path=model_path),
        reference=dataclasses.replace(config.reference, name_or_path=None if ref_path is None else local(ref_path)),
        online=dataclasses.replace(online, prompts=local(online.prompts),
                                   judge=local(online.judge) if os.path.exists(online.judge) else online.judge),
        data=dataclasses.replace(config.data, path=local(config.data.path), sources=sources),
        output_dir=output_dir,
    )


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    return path.read_text()


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{key}': '{part}' is a value, not a group")
        node = child
    node[parts[-1]] = value


def build_group(cls: type, raw: Any, prefix: str) -> Any:
    """A config dataclass from plain data; errors name ``prefix`` + the key."""
    where = prefix.rstrip(".") or "config"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}' (known in {where}: {', '.join(names)})"
        )
    kwargs: dict[str, Any] = {}
    for name in names:
        if name not in raw:
            continue
        tp = hints[name]
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build_group(tp, raw[name], prefix=f"{key}.")
        else:
            kwargs[name] = _coerce(raw[name], tp, key)
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        if value in args and type(value) in {type(a) for a in args}:
            return value
        raise ConfigError(f"{key}={value!r}: must be one of {', '.join(map(repr, args))}")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: cannot be {value!r}")
    if origin is list:
        if not isinstance(value, list):
            value = [value]
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return build_group(tp, value, prefix=f"{key}.")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads "1e-5" as a string
        except ValueError:
            pass
    if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{key}={value!r}: expected {tp.__name__}, got {type(value).__name__}")

