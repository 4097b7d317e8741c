"""Driver-side checks before Ray starts: every mistake a user can make in the config's paths gets
one line naming the key, the path and what to do, instead of a traceback from a Ray actor.

Pure ring: no Ray import; transformers only for the rare tokenizer that declares no EOS in its
files. What is checked (all on local disk, cheap: JSON parses and safetensors headers):
- model.name_or_path: a local directory with a parseable config.json, tokenizer files and intact
  weights (safetensors header and length, every shard of an index, a .bin's zip/pickle framing),
  or a hub id that resolves (offline: in the hub cache, then checked as a local directory);
  a tokenizer with an EOS token (DPO appends it to completions and pads with it).
- data.path and each data.sources path that is local files: present (data.expand_paths).
- output_dir, reference.cache_dir, data.cache_dir: not a file, nor under one; output_dir holds no
  finished run (model/) unless overwrite_output_dir.
- train.resume_from: a directory that holds a checkpoint.
Remote URIs (s3://, gs://) and hub datasets are not checked here (Ray Data and datasets name them).
"""

from __future__ import annotations

import importlib.util
import json
import os
import zipfile
from pathlib import Path
from typing import Any

from dpo_ray.config import Config, ConfigError
from dpo_ray.data.parse import DataError, expand_paths, source_kind
from dpo_ray.outputs import refuse_finished_run
from dpo_ray.paths import is_remote, looks_like_hub_id
from dpo_ray.reference.placement import spreads
from dpo_ray.train.checkpoint import find_checkpoint
from dpo_ray.tune.settings import TuneSettings, apply_params, domain_values

VOCAB_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model")
"""A tokenizer needs one of these (or a *.tiktoken file); custom code (trust_remote_code) may use others."""
JSON_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "adapter_config.json")
INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SAVE_HINT = "save it again with model.save_pretrained(dir) and tokenizer.save_pretrained(dir)"
PATH_KEYS = ("model.name_or_path", "model.revision", "model.trust_remote_code", "data.path", "data.sources",
             "reference.cache_dir", "data.cache_dir", "train.resume_from", "output_dir")
"""Searched keys whose every value a sweep checks before its first trial."""


def preflight(cfg: Config, *, writes_model: bool = True) -> None:
    """Raise ConfigError / DataError (one line) for the first unusable path in ``cfg``.
    ``writes_model=False`` (the data and reference stages alone): a finished run in output_dir is fine."""
    _check_dir_path("output_dir", cfg.output_dir)
    if writes_model and not is_remote(cfg.output_dir):
        refuse_finished_run(Path(cfg.output_dir).expanduser(), cfg.overwrite_output_dir)
    for key, path in (("reference.cache_dir", cfg.reference.cache_dir), ("data.cache_dir", cfg.data.cache_dir)):
        if path:
            _check_dir_path(key, path)
    if cfg.train.resume_from:
        find_checkpoint(cfg.train.resume_from)
    sources = [(f"data.sources {s.name}: path", s.path) for s in cfg.data.sources] or [("data.path", cfg.data.path)]
    for where, path in sources:
        if source_kind(path) == "files":
            expand_paths(path, where=where)
    check_model(cfg.model.name_or_path, cfg.model.revision, cfg.model.trust_remote_code)
    if cfg.reference.name_or_path is not None and not cfg.loss.reference_free():
        check_model(cfg.reference.name_or_path, None, cfg.model.trust_remote_code, key="reference.name_or_path")
    check_spread_support(cfg.reference.num_gpus_per_actor, reference_free=cfg.loss.reference_free())
    check_trackers(cfg.train.report_to)


def check_trackers(report_to: list[str]) -> None:
    """Each optional sink in train.report_to has its package (the extra of the same name)."""
    for sink in ("mlflow", "wandb"):
        if sink in report_to and importlib.util.find_spec(sink) is None:
            raise ConfigError(f"train.report_to has {sink}, but the {sink} package is not installed: "
                              f"pip install -e \".[{sink}]\" (or drop {sink} from train.report_to)")


def check_spread_support(num_gpus_per_actor: float, *, reference_free: bool) -> None:
    """A reference model spread over an actor's GPUs loads with device_map='auto', which needs accelerate
    (checked on the driver; the scoring nodes run the same environment)."""
    if spreads(num_gpus_per_actor) and not reference_free and importlib.util.find_spec("accelerate") is None:
        raise ConfigError(f"reference.num_gpus_per_actor={num_gpus_per_actor:g}: spreading the reference model over "
                          "several GPUs needs accelerate (device_map='auto'); pip install accelerate, or use 1 GPU per actor")


def preflight_sweep(base: Config, settings: TuneSettings) -> None:
    """preflight for a sweep: its base config, and the config of each value a searched path key takes."""
    preflight(base)
    base_raw = base.to_dict()
    for key, spec in settings.search_space.items():
        if key in PATH_KEYS:
            for value in domain_values(spec):
                try:
                    preflight(apply_params(base_raw, {key: value}))
                except (ConfigError, DataError) as err:
                    raise type(err)(f"tune.search_space.{key}: value {value!r}: {err}") from None


def check_model(name_or_path: str, revision: str | None, trust_remote_code: bool = False, *,
                key: str = "model.name_or_path") -> None:
    """A local model directory, or a hub id, that from_pretrained can load (see module docstring);
    errors name ``key`` (the config key that gave the path)."""
    path = Path(name_or_path).expanduser()
    if path.exists() or not looks_like_hub_id(name_or_path):
        check_model_dir(name_or_path, path, trust_remote_code, key=key)
    else:
        _check_hub_model(name_or_path, revision, trust_remote_code, key=key)


def check_model_dir(name: str, path: Path, trust_remote_code: bool = False, *, key: str = "model.name_or_path") -> None:
    key = f"{key}={name}"
    if not path.exists():
        where = "" if path.is_absolute() else f" (relative to {os.getcwd()})"
        raise ConfigError(f"{key}: no such directory{where}; point it to a directory saved with save_pretrained, or a hub id (org/name)")
    if not path.is_dir():
        raise ConfigError(f"{key}: a file, not a directory; point it to the directory that holds config.json")
    parsed = {f: _read_json(key, path / f) for f in JSON_FILES if (path / f).is_file()}
    adapter_only = "adapter_config.json" in parsed and "config.json" not in parsed  # a PEFT adapter names its base
    if "config.json" not in parsed and not adapter_only:
        raise ConfigError(f"{key}: no config.json in it; is it the model's directory? If so, {SAVE_HINT}")
    names = {p.name for p in path.iterdir() if p.is_file()}
    if not trust_remote_code and not names & set(VOCAB_FILES) and not any(n.endswith(".tiktoken") for n in names):
        raise ConfigError(f"{key}: no tokenizer files (one of {', '.join(VOCAB_FILES)}); "
                          "save the tokenizer there with tokenizer.save_pretrained(dir)")
    _check_weights(key, path, names, adapter_only)
    if not _declares_eos(parsed):
        _check_eos_by_loading(key, str(path), trust_remote_code)


def _read_json(key: str, path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{key}: {path.name} is not valid JSON ({str(err).splitlines()[0]}); the file is damaged, {SAVE_HINT}") from err
    except OSError as err:
        raise ConfigError(f"{key}: cannot read {path.name} ({err.strerror}); check its permissions") from err


def _check_weights(key: str, path: Path, names: set[str], adapter_only: bool) -> None:
    """Weights from_pretrained would load: every shard an index names, else the top-level files."""
    shards: set[str] = set()
    for index in INDEXES:
        if index in names:
            weight_map = _read_json(key, path / index).get("weight_map", {})
            shards |= set(weight_map.values())
            missing = sorted(s for s in set(weight_map.values()) if s not in names)
            if missing:
                raise ConfigError(f"{key}: {index} names {missing[0]}, which is missing; copy every shard, or {SAVE_HINT}")
    if not shards:
        stems = ("adapter_model",) if adapter_only else ("model", "pytorch_model")
        shards = {n for n in names if n.startswith(stems) and n.endswith((".safetensors", ".bin"))}
    if not shards:
        raise ConfigError(f"{key}: no weights (*.safetensors or pytorch_model.bin); {SAVE_HINT}")
    for shard in sorted(shards):
        try:
            problem = _safetensors_problem(path / shard) if shard.endswith(".safetensors") else _bin_problem(path / shard)
        except OSError as err:
            raise ConfigError(f"{key}: cannot read {shard} ({err.strerror}); check its permissions") from err
        if problem:
            raise ConfigError(f"{key}: {shard} is damaged ({problem}); {SAVE_HINT}")


def _safetensors_problem(path: Path) -> str | None:
    """Format: 8-byte little-endian header length, a JSON header of tensor byte ranges, the data;
    the last range must end exactly at the end of the file (safetensors' own check)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 0 or n > size - 8:
            return f"truncated: {size} bytes, shorter than its header"
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "its header is not valid JSON"
    try:
        ends = [int(t["data_offsets"][1]) for name, t in header.items() if name != "__metadata__"]
    except (AttributeError, KeyError, TypeError, IndexError, ValueError):
        return "its header is not a safetensors header"
    if size != 8 + n + max(ends, default=0):
        return f"{size} bytes where its header describes {8 + n + max(ends, default=0)}"
    return None


def _bin_problem(path: Path) -> str | None:
    """torch.save files are zip archives (torch >= 1.6) or a bare pickle (older)."""
    with path.open("rb") as f:
        head = f.read(2)
    if zipfile.is_zipfile(path) or head[:1] == b"\x80":  # pickle protocol 2+ starts with PROTO 0x80
        return None
    return "neither a zip archive nor a pickle: truncated or overwritten"


def _declares_eos(parsed: dict[str, Any]) -> bool:
    """The tokenizer files name an EOS token (str or AddedToken dict): the common, cheap case."""
    return any(isinstance(parsed.get(name), dict) and parsed[name].get("eos_token")
               for name in ("tokenizer_config.json", "special_tokens_map.json"))


def _check_eos_by_loading(key: str, name_or_path: str, trust_remote_code: bool) -> None:
    """No EOS in the files: the tokenizer class may still define one; load it to know (seconds)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{key}: the tokenizer does not load ({str(err).splitlines()[0]}); {SAVE_HINT}") from err
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"{key}: the tokenizer has no EOS token; DPO appends EOS to every completion (and pads with "
                          "it where there is no pad token): set eos_token in tokenizer_config.json")


def _check_hub_model(name: str, revision: str | None, trust_remote_code: bool, *, key: str = "model.name_or_path") -> None:
    """Offline (HF_HUB_OFFLINE): the cached snapshot, checked as a local directory. Online: the
    repo and revision resolve (config.json, a few hundred bytes, lands in the hub cache)."""
    from huggingface_hub import constants, hf_hub_download, snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    field_key, key, rev = key, f"{key}={name}", revision or "main"
    if constants.HF_HUB_OFFLINE:
        try:
            snapshot = snapshot_download(name, revision=revision, local_files_only=True)
        except LocalEntryNotFoundError as err:
            raise ConfigError(f"{key}: HF_HUB_OFFLINE is set and {name}@{rev} is not in the hub cache ({constants.HF_HUB_CACHE}); "
                              f"download it once online (hf download {name}) or point {field_key} to a local directory") from err
        check_model_dir(name, Path(snapshot), trust_remote_code, key=field_key)
        return
    try:
        hf_hub_download(name, "config.json", revision=revision)
    except LocalEntryNotFoundError as err:
        raise ConfigError(f"{key}: the hub cannot be reached and {name}@{rev} is not cached; check the network, "
                          f"or point {field_key} to a local directory") from err
    except RepositoryNotFoundError as err:
        raise ConfigError(f"{key}: no such model on the hub, or it is private or gated; check the id, or set HF_TOKEN") from err
    except RevisionNotFoundError as err:
        raise ConfigError(f"{key}: the hub repo has no revision {rev}; check model.revision") from err
    except EntryNotFoundError as err:
        raise ConfigError(f"{key}: the hub repo has no config.json; is it a model repo?") from err
    except HfHubHTTPError as err:
        raise ConfigError(f"{key}: the hub refused it ({str(err).splitlines()[0]})") from err


def _check_dir_path(key: str, path: str) -> None:
    """A local directory path (it may not exist yet) that is not a file nor under one."""
    if is_remote(path):
        return
    p = Path(path).expanduser().absolute()
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{key} {path} is a file, not a directory; choose another {key}")
    parent = next(a for a in p.parents if a.exists())  # "/" always exists
    if not parent.is_dir():
        raise ConfigError(f"{key} {path}: {parent} is a file, not a directory; choose another {key}")
