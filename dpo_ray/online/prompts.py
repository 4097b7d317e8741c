"""The online run's prompts and its checks before Ray starts (pure ring: no Ray import).

Prompts come from local JSONL/JSON/Parquet/CSV files (a file, a directory or a glob, as data.path), a
dataset saved with save_to_disk, or a hub dataset id; ``online.prompt_column`` holds a prompt as text
or as a list of {role, content} messages. A bad row stops the run with one line naming file and row.
Repeated prompts are kept once (their samples would be the same seeds' draws).
"""

from __future__ import annotations

import json
import os
from typing import Any

from dpo_ray.config import Config, ConfigError
from dpo_ray.config_online import OnlineConfig
from dpo_ray.data.parse import DataError, expand_paths, load_hf_table, source_kind

Prompt = str | list[dict[str, str]]


def read_prompts(on: OnlineConfig) -> list[Prompt]:
    """Every distinct prompt, in file order."""
    if source_kind(on.prompts) == "files":
        found = [p for path in expand_paths(on.prompts, where="online.prompts") for p in _file_prompts(path, on.prompt_column)]
    else:
        table = load_hf_table(on.prompts, split=on.split, subset=None, revision=None)
        if on.prompt_column not in table.column_names:
            raise DataError(f"online.prompts {on.prompts}: no column '{on.prompt_column}' (columns: "
                            f"{', '.join(table.column_names)}); set online.prompt_column")
        found = [_prompt(v, f"{on.prompts}: row {i + 1}") for i, v in enumerate(table.column(on.prompt_column).to_pylist())]
    if not found:
        raise DataError(f"online.prompts {on.prompts}: no prompts; give a file with a '{on.prompt_column}' column")
    seen: set[str] = set()
    distinct = []
    for prompt in found:
        key = json.dumps(prompt, sort_keys=True)
        if key not in seen:
            seen.add(key)
            distinct.append(prompt)
    return distinct


def _file_prompts(path: str, column: str) -> list[Prompt]:
    name = path.lower()
    if name.endswith((".jsonl", ".json")):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if name.endswith(".json") and text.lstrip().startswith("["):
            records = list(enumerate(json.loads(text), 1))
        else:
            records = []
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        records.append((n, json.loads(line)))
                    except json.JSONDecodeError as err:
                        raise DataError(f"{path}: line {n}: not valid JSON ({err.msg}); fix or remove the line") from err
    else:
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq

        table = pq.read_table(path) if name.endswith(".parquet") else pcsv.read_csv(path)
        records = list(enumerate(table.to_pylist(), 1))
    out = []
    for n, rec in records:
        where = f"{path}: {'line' if name.endswith('.jsonl') else 'row'} {n}"
        if not isinstance(rec, dict) or column not in rec:
            raise DataError(f"{where}: no '{column}' field; every row needs one (or set online.prompt_column)")
        out.append(_prompt(rec[column], where))
    return out


def _prompt(value: Any, where: str) -> Prompt:
    if isinstance(value, str) and value.strip():
        return value
    if (isinstance(value, list) and value
            and all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise DataError(f"{where}: the prompt is {type(value).__name__} {str(value)[:40]!r}; give non-empty text "
                    "or a list of {role, content} messages")


def check_online(cfg: Config) -> None:
    """One line (ConfigError / DataError) for the first unusable online setting, before Ray starts."""
    from dpo_ray.online.judges import import_callable, is_import_path
    from dpo_ray.preflight import check_model

    on = cfg.online
    if cfg.model.lora.r > 0 and cfg.model.lora.export == "adapter":
        raise ConfigError("online: model.lora.export=adapter: each round's model is the next round's policy, "
                          "so it must be a whole model; use model.lora.export=merged")
    if os.path.isfile(cfg.output_dir):
        raise ConfigError(f"output_dir {cfg.output_dir} is a file; give a directory")
    check_model(cfg.model.name_or_path, cfg.model.revision, cfg.model.trust_remote_code)
    import_callable(on.generation.generator, "online.generation.generator")
    if is_import_path(on.judge):
        import_callable(on.judge, "online.judge")
    elif os.path.exists(on.judge) or "/" not in on.judge:
        if not os.path.isdir(on.judge):
            raise ConfigError(f"online.judge={on.judge}: neither module:function nor a reward model directory")
    if source_kind(on.prompts) == "files":
        expand_paths(on.prompts, where="online.prompts")
