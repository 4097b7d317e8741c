"""--help lists every config key with its type, default and doc, from the dataclass docstrings."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
from dataclasses import dataclass, field
from typing import Literal

import pytest

from conftest import REPO
from dpo_ray.config import Config
from dpo_ray.config_help import field_docs, format_help, one_line, sections, show, type_name
from dpo_ray.tune.settings import TuneSettings


def _groups(cls: type, prefix: str) -> list[tuple[str, type]]:
    """Every dataclass reachable from ``cls`` with the dotted prefix of its keys."""
    found = [(prefix, cls)]
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        item = typing.get_args(tp)[0] if typing.get_origin(tp) is list else None
        if dataclasses.is_dataclass(tp):
            found += _groups(tp, f"{prefix}{f.name}.")
        elif item is not None and dataclasses.is_dataclass(item):
            found += _groups(item, f"{prefix}{f.name}[].")
    return found


@pytest.mark.parametrize("root,prefix", [(Config, ""), (TuneSettings, "tune.")])
def test_every_field_has_a_doc_and_is_in_the_help(root: type, prefix: str) -> None:
    text = format_help(sections(root, prefix))
    groups = _groups(root, prefix)
    assert len(groups) >= (8 if root is Config else 1)
    for group_prefix, cls in groups:
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            assert docs.get(f.name, "").strip(), f"{cls.__name__}.{f.name} has no docstring"
            if not dataclasses.is_dataclass(typing.get_type_hints(cls)[f.name]):
                assert f"  {group_prefix}{f.name}  (" in text, f"{group_prefix}{f.name} missing from --help"


def test_sections_in_order_with_type_default_and_doc() -> None:
    groups = sections(Config)
    assert [title for title, _, _ in groups] == [
        "model", "model.lora", "data", "data.columns", "data.sources[]", "reference", "loss", "train", "online", "online.generation",
        "top level"]
    keys = {k.key: k for _, _, ks in groups for k in ks}
    assert keys["loss.beta"].type == "float" and keys["loss.beta"].default == "0.1"
    assert keys["loss.beta"].doc == "Inverse temperature of the implicit reward beta * log(pi / pi_ref)."
    assert keys["model.lora.target_modules"].default == "[q_proj, k_proj, v_proj, o_proj]"
    assert keys["data.max_prompt_length"].type == "int | null" and keys["data.max_prompt_length"].default == "null"
    assert keys["data.sources[].name"].default == "required"


@dataclass(frozen=True)
class _Toy:
    mode: Literal["a", "b"] = "a"
    """Pick a (e.g. the first) or b. More text that --help leaves out."""
    items: list[str] = field(default_factory=list)
    undocumented: bool | None = None


def test_parts_on_a_toy_dataclass() -> None:
    assert field_docs(_Toy) == {"mode": "Pick a (e.g. the first) or b. More text that --help leaves out."}
    assert one_line(field_docs(_Toy)["mode"]) == "Pick a (e.g. the first) or b."
    hints = typing.get_type_hints(_Toy)
    assert [type_name(hints[n]) for n in ("mode", "items", "undocumented")] == ["a|b", "list[str]", "bool | null"]
    assert [show(v) for v in (None, True, [], "", 5e-07, {"x": [1]})] == ["null", "true", "[]", '""', "5e-07", "{x: [1]}"]


@pytest.mark.parametrize("script", ["dpo.py", "sweep.py", "precompute_ref.py"])
def test_entry_script_help_is_fast_and_loads_neither_ray_nor_torch(script: str) -> None:
    code = (f"import runpy, sys; sys.argv = ['{script}', '--help']\n"
            f"try:\n    runpy.run_path('{REPO / 'pipelines' / script}', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('LOADED', [m for m in ('ray', 'torch') if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "LOADED []" in proc.stdout
    assert "train.learning_rate  (float, default 5e-07)" in proc.stdout
    assert ("tune.searcher  (grid|random|optuna" in proc.stdout) == (script == "sweep.py")
