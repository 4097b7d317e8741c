"""Every config key with its type, default and one-line doc, for the entry scripts' --help.

Pure ring and light (no Ray, no torch): the docs are the attribute docstrings of the dataclass
fields in dpo_ray/config.py and config_loss.py (the string literal right after a field), read from the source with ast,
so the help and the schema cannot drift apart.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import textwrap
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union

# A sentence ends at ". " before a capital letter, except after "e.g" / "i.e".
SENTENCE_END = re.compile(r"(?<!e\.g)(?<!i\.e)\.\s+(?=[A-Z])")


@dataclass(frozen=True)
class KeyHelp:
    key: str
    """Dotted key as an override takes it (train.learning_rate)."""
    type: str
    default: str
    doc: str
    """First sentence of the field's docstring ("" when it has none)."""


def field_docs(cls: type) -> dict[str, str]:
    """{field name: its docstring, dedented} for a dataclass, from the string literal after each field."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = next(node for node in tree.body if isinstance(node, ast.ClassDef)).body
    docs: dict[str, str] = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def one_line(doc: str) -> str:
    """The first sentence of a docstring, on one line."""
    flat = " ".join(doc.split())
    first = SENTENCE_END.split(flat, maxsplit=1)[0]
    return first if first.endswith(".") or first == flat else first + "."


def type_name(tp: Any) -> str:
    """A field annotation as a user reads it: Literal choices joined by |, None as null."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join("null" if a is type(None) else type_name(a) for a in args)
    if origin is list:
        return f"list[{type_name(args[0])}]"
    if origin is dict or tp is dict:
        return "mapping"
    return tp.__name__


def show(value: Any) -> str:
    """A default as it is written in YAML or an override."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return value or '""'
    return repr(value)


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return show(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return show(f.default_factory())
    return "required"


def sections(cls: type, prefix: str = "", title: str = "top level") -> list[tuple[str, str, list[KeyHelp]]]:
    """(title, section doc, keys) for ``cls`` and every group nested in it, depth first, the
    top-level keys last. A list of groups (data.sources) is a key and a section of its own ([] entries)."""
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    keys: list[KeyHelp] = []
    nested: list[tuple[str, str, list[KeyHelp]]] = []
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            sub = sections(tp, f"{key}.", key)
            nested += [(sub[-1][0], one_line(docs.get(f.name, "")), sub[-1][2]), *sub[:-1]]
            continue
        keys.append(KeyHelp(key, type_name(tp), _default(f), one_line(docs.get(f.name, ""))))
        item = typing.get_args(tp)[0] if typing.get_origin(tp) is list else None
        if item is not None and dataclasses.is_dataclass(item):
            entry = sections(item, f"{key}[].", f"{key}[]")
            nested.append((entry[-1][0], f"each entry of {key}", entry[-1][2]))
    return [*nested, (title, "", keys)]


def format_help(groups: list[tuple[str, str, list[KeyHelp]]], width: int = 100) -> str:
    """The config keys as --help shows them: a header per group, two lines per key."""
    lines = ["config keys (set in --config YAML or as key=value overrides):"]
    for title, doc, keys in groups:
        lines += ["", f"{title}:" + (f"  {doc}" if doc else "")]
        for k in keys:
            lines.append(f"  {k.key}  ({k.type}, default {k.default})")
            lines += textwrap.wrap(k.doc, width, initial_indent="      ", subsequent_indent="      ")
    lines += ["", "Each line is the first sentence of the field's docstring in dpo_ray/config.py; the README has the rest."]
    return "\n".join(lines)
