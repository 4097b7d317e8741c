"""Preference record formats -> one normalised row, or a counted drop reason.

Pure ring: no Ray import. Formats (TRL's names where TRL has them):

- standard: prompt, chosen, rejected are strings.
- conversational: prompt is a list of {role, content} messages; chosen / rejected are lists of
  messages (usually one assistant turn). Rendered later with the tokenizer's chat template.
- implicit_prompt (Anthropic HH-RLHF): no prompt; chosen and rejected are whole transcripts (strings
  or message lists) and the prompt is their common prefix.
- ultrafeedback (UltraFeedback-binarized): chosen / rejected are message lists that include the
  prompt turn(s); the prompt is the common message prefix (a string prompt column is ignored).
- sharegpt (LLaMA-Factory's DPO layout): ``conversations`` is a list of {from, value} turns (from:
  human / gpt / system), chosen / rejected one {from: gpt, value} turn each (or a list of them); an
  optional ``system`` string column becomes a first system turn.

A normalised row keeps texts as strings: message lists travel JSON-encoded with ``kind="messages"``;
a string transcript split by the common prefix has ``kind="implicit"`` (tokenization moves the cut
to a token boundary, see data/tokenize.py).
"""

from __future__ import annotations

import json
from typing import Any

DROP_REASONS = (
    "invalid_json", "not_an_object", "missing_field", "null_field", "non_string", "bad_messages",
    "empty_completion", "identical_completions", "no_common_prompt", "prompt_too_long",
    "chat_template_mismatch", "chat_template_error",
)


SHAREGPT_TURNS = "conversations"
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}  # TRL's and LLaMA-Factory's names


class RowDrop(Exception):
    """A row that cannot be used; ``reason`` is one of DROP_REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def normalize_record(rec: Any, *, fmt: str, columns: dict[str, str]) -> dict[str, str]:
    """One raw record -> {prompt, chosen, rejected, kind}. Raises RowDrop with the reason.

    ``columns`` maps our names (prompt/chosen/rejected) to the record's keys.
    """
    if not isinstance(rec, dict):
        raise RowDrop("not_an_object", f"expected an object, got {type(rec).__name__}")
    chosen = _field(rec, columns["chosen"])
    rejected = _field(rec, columns["rejected"])
    has_prompt = columns["prompt"] in rec and rec[columns["prompt"]] is not None
    if fmt == "auto":
        fmt = "sharegpt" if SHAREGPT_TURNS in rec else detect_format(has_prompt, rec.get(columns["prompt"]), chosen)
    match fmt:
        case "standard":
            prompt = _field(rec, columns["prompt"])
            row = _text_row(prompt, chosen, rejected)
        case "conversational":
            prompt = _field(rec, columns["prompt"])
            row = _messages_row(_messages(prompt, "prompt"), _messages(chosen, "chosen"), _messages(rejected, "rejected"))
        case "implicit_prompt" | "ultrafeedback":
            row = _split_common_prefix(chosen, rejected)
        case "sharegpt":
            row = _sharegpt_row(rec, chosen, rejected)
        case _:
            raise ValueError(f"data.format={fmt!r} is unknown")
    return row


def detect_format(has_prompt: bool, prompt: Any, chosen: Any) -> str:
    if isinstance(chosen, list):
        return "conversational" if isinstance(prompt, list) else "ultrafeedback"
    return "standard" if has_prompt else "implicit_prompt"


def _field(rec: dict[str, Any], key: str) -> Any:
    if key not in rec:
        raise RowDrop("missing_field", f"missing '{key}'")
    if rec[key] is None:
        raise RowDrop("null_field", f"'{key}' is null")
    return rec[key]


def _text_row(prompt: Any, chosen: Any, rejected: Any) -> dict[str, str]:
    for name, value in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, str):
            raise RowDrop("non_string", f"'{name}' is {type(value).__name__}, expected a string")
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if not value.strip():
            raise RowDrop("empty_completion", f"'{name}' is empty")
    if chosen == rejected:
        raise RowDrop("identical_completions", "chosen and rejected are identical")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "kind": "text"}


def _messages(value: Any, name: str) -> list[dict[str, str]]:
    ok = isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    )
    if not ok:
        raise RowDrop("bad_messages", f"'{name}' is not a list of {{role, content}} messages")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _messages_row(prompt: list[dict[str, str]], chosen: list[dict[str, str]], rejected: list[dict[str, str]]) -> dict[str, str]:
    for name, msgs in (("chosen", chosen), ("rejected", rejected)):
        if not msgs or not any(m["content"].strip() for m in msgs):
            raise RowDrop("empty_completion", f"'{name}' has no content")
    if chosen == rejected:
        raise RowDrop("identical_completions", "chosen and rejected are identical")
    return {"prompt": json.dumps(prompt), "chosen": json.dumps(chosen), "rejected": json.dumps(rejected), "kind": "messages"}


def _split_common_prefix(chosen: Any, rejected: Any) -> dict[str, str]:
    """Prompt = common prefix of the two transcripts (TRL's extract_prompt)."""
    if chosen == rejected:
        raise RowDrop("identical_completions", "chosen and rejected are identical")
    if isinstance(chosen, list) or isinstance(rejected, list):
        c, r = _messages(chosen, "chosen"), _messages(rejected, "rejected")
        n = 0
        while n < min(len(c), len(r)) - 1 and c[n] == r[n]:
            n += 1
        if n == 0:
            raise RowDrop("no_common_prompt", "chosen and rejected share no prompt messages")
        return _messages_row(c[:n], c[n:], r[n:])
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        raise RowDrop("non_string", "chosen and rejected must both be strings or both message lists")
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if 0 < n and chosen[n - 1] == " ":
        n -= 1  # keep the space with the completion, as TRL does
    if n == 0:
        raise RowDrop("no_common_prompt", "chosen and rejected share no prompt prefix")
    return {**_text_row(chosen[:n], chosen[n:], rejected[n:]), "kind": "implicit"}


def _sharegpt_turns(value: Any, name: str) -> list[dict[str, str]]:
    """{from, value} turns (one, or a list) -> {role, content} messages; unknown roles are bad_messages."""
    turns = [value] if isinstance(value, dict) else value
    ok = isinstance(turns, list) and all(
        isinstance(t, dict) and t.get("from") in SHAREGPT_ROLES and isinstance(t.get("value"), str) for t in turns
    )
    if not ok:
        roles = "/".join(SHAREGPT_ROLES)
        raise RowDrop("bad_messages", f"'{name}' is not a {{from, value}} turn or list of turns (from: {roles})")
    return [{"role": SHAREGPT_ROLES[t["from"]], "content": t["value"]} for t in turns]


def _sharegpt_row(rec: dict[str, Any], chosen: Any, rejected: Any) -> dict[str, str]:
    """LLaMA-Factory's DPO layout: the prompt is ``conversations`` (after an optional ``system`` column)."""
    prompt = _sharegpt_turns(_field(rec, SHAREGPT_TURNS), SHAREGPT_TURNS)
    system = rec.get("system")
    if isinstance(system, str) and system.strip() and not (prompt and prompt[0]["role"] == "system"):
        prompt = [{"role": "system", "content": system}] + prompt
    if not prompt:
        raise RowDrop("bad_messages", f"'{SHAREGPT_TURNS}' has no turns")
    return _messages_row(prompt, _sharegpt_turns(chosen, "chosen"), _sharegpt_turns(rejected, "rejected"))
