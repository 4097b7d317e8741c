"""Token ids of one preference pair in TRL 1.16's DPOTrainer layout, for any Hugging Face tokenizer.

Pure ring: no Ray import. TokenizeRows is the callable class the data stage's tokenizer actors run.
What TRL 1.16 does (trl/trainer/dpo_trainer.py, ``_prepare_dataset``):

- text rows: the EOS text is appended to each completion (unless it already ends with it); the
  prompt, prompt + chosen and prompt + rejected are tokenized; the prompt ids are cut to their
  common prefix with both joint sequences, and each completion is the rest of its joint sequence.
- chat rows: ``apply_chat_template(prompt, add_generation_prompt=True)`` and
  ``apply_chat_template(prompt + completion)``, the same common-prefix cut, and no EOS added: the
  template's own end-of-turn / EOS tokens end a completion, and its own BOS (if any) starts it.
- implicit prompts (HH transcripts): ``extract_prompt`` cuts at the common character prefix, then
  the cut above moves it back to the common token prefix.

``jointly=True`` is exactly that. ``jointly=False`` (the default, README "Data") differs only where
the prompt's own ids are not a prefix of the joint ids: the prompt keeps its own ids (what a model
is given at inference) and that completion is tokenized on its own, as the continuation of the
prompt. Implicit prompts have no given text to keep, so both modes cut them at the token prefix.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from jinja2 import TemplateError

from dpo_ray.data.formats import RowDrop
from dpo_ray.data.parse import ROW_FIELDS, row_hash, row_id, split_key

TOKENIZE_VERSION = 2
"""Bump when the ids made from the same rows and tokenizer change: the tokenized and reference cache
keys hold it, so old entries miss. 2: TRL 1.16 parity (no EOS after a chat template's end of turn,
HH prompts cut at the token prefix, SentencePiece completions without a prefix space, joint mode)."""

PREFIX_ANCHOR = "\n"
"""Text put before a completion so a SentencePiece tokenizer's prefix space goes to it, not to the
completion; newline is a byte-fallback token that merges with nothing in these vocabularies."""

Ids = list[int]


def common_prefix_length(ids: Ids, other: Ids) -> int:
    """Leading tokens two sequences share (TRL's common_prefix_length)."""
    n = 0
    for a, b in zip(ids, other):
        if a != b:
            break
        n += 1
    return n


def tokenizer_adds_bos(tokenizer: Any) -> bool:
    """True when the tokenizer itself puts BOS in front of text (Llama-style), as TRL relies on."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("x")["input_ids"][:1] == [bos]


def adds_prefix_space(tokenizer: Any) -> bool:
    """True for SentencePiece-style tokenizers that start a text with '▁' ('a' -> '▁a')."""
    ids = tokenizer("a", add_special_tokens=False)["input_ids"]
    return bool(ids) and tokenizer.convert_ids_to_tokens(ids[:1])[0].startswith("▁")


class PairTokenizer:
    """One tokenizer's ids for text, implicit-prompt and chat rows (see the module docstring).

    Each method returns (prompt_ids, chosen_ids, rejected_ids, warning) with completions already
    ending as TRL ends them (EOS for text rows, the template's end of turn for chat rows); the
    warning is ``prompt_not_token_prefix`` where a given prompt's ids are not a prefix of the joint
    ids (TRL warns there too). BOS is left to the caller (``bos_id``: text rows only).
    """

    def __init__(self, tokenizer: Any, *, jointly: bool) -> None:
        self.tokenizer = tokenizer
        self.jointly = jointly
        self.bos_id: int | None = tokenizer.bos_token_id if tokenizer_adds_bos(tokenizer) else None
        self.anchor: Ids | None = self.encode(PREFIX_ANCHOR) if adds_prefix_space(tokenizer) else None

    def encode(self, text: str) -> Ids:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def continuation(self, text: str) -> Ids:
        """Ids of ``text`` as it follows other text: a SentencePiece tokenizer adds no '▁' in front,
        so the ids decode to the text in the file, not to ' ' + it."""
        if self.anchor is None:
            return self.encode(text)
        ids = self.encode(PREFIX_ANCHOR + text)
        n = len(self.anchor)
        return ids[n:] if ids[:n] == self.anchor else self.encode(text)

    def text(self, prompt: str, chosen: str, rejected: str, *, implicit: bool = False) -> tuple[Ids, Ids, Ids, str]:
        eos = self.tokenizer.eos_token
        completions = [c if c.endswith(eos) else c + eos for c in (chosen, rejected)]
        prompt_ids = self.encode(prompt)
        joint = [self.encode(prompt + c) for c in completions]
        return self._split(prompt_ids, joint, completions, cut_at_prefix=self.jointly or implicit, warn=not implicit)

    def chat(self, prompt: list[dict[str, str]], chosen: list[dict[str, str]],
             rejected: list[dict[str, str]]) -> tuple[Ids, Ids, Ids, str] | None:
        """None when a completion's rendering does not start with the prompt's (``chat_template_mismatch``;
        joint mode cuts at the token prefix instead, as TRL). RowDrop ``chat_template_error`` when the
        template raises (Mistral's refuses a system turn; TRL stops there)."""
        prompt_text = self.render(prompt, add_generation_prompt=True)
        full = [self.render(prompt + c, add_generation_prompt=False) for c in (chosen, rejected)]
        if not self.jointly and not all(f.startswith(prompt_text) for f in full):
            return None
        joint = [self.encode(f) for f in full]
        suffixes = [f[len(prompt_text):] for f in full]
        return self._split(self.encode(prompt_text), joint, suffixes, cut_at_prefix=self.jointly, warn=True)

    def render(self, messages: list[dict[str, str]], *, add_generation_prompt: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        except TemplateError as err:  # the template's raise_exception(), an undefined name, a sandbox refusal:
            # transformers renders with jinja2 and lets its errors through (utils/chat_template_utils.py)
            raise RowDrop("chat_template_error", f"chat template error: {err}") from err

    def _split(self, prompt_ids: Ids, joint: list[Ids], completions: list[str], *, cut_at_prefix: bool,
               warn: bool) -> tuple[Ids, Ids, Ids, str]:
        """TRL's cut at the common token prefix, or (cut_at_prefix=False) the prompt's own ids, each
        completion the rest of its joint ids where the prompt is their prefix, else its own ids."""
        k = min(common_prefix_length(prompt_ids, ids) for ids in joint)
        warning = "prompt_not_token_prefix" if warn and k < len(prompt_ids) else ""
        if cut_at_prefix or k == len(prompt_ids):
            return prompt_ids[:k], joint[0][k:], joint[1][k:], warning
        n = len(prompt_ids)
        own = [ids[n:] if ids[:n] == prompt_ids else self.continuation(text) for ids, text in zip(joint, completions)]
        return prompt_ids, own[0], own[1], warning


def tokenize_pair(
    prompt_ids: Ids,
    chosen_ids: Ids,
    rejected_ids: Ids,
    *,
    bos_id: int | None,
    eos_id: int | None,
    max_length: int,
    max_prompt_length: int | None = None,
    truncation_mode: str = "keep_end",
) -> tuple[Ids, Ids, Ids] | None:
    """TRL's layout: [BOS] + prompt, completion [+ EOS] (eos_id None: the completions already end).

    A prompt longer than max_prompt_length (not in TRL 1.16) keeps its start or its end
    (truncation_mode); then completions are cut so prompt + completion fits max_length, which is
    TRL 1.16's keep_start truncation. Returns None when the prompt leaves no room for a completion
    token (the row is dropped as ``prompt_too_long``, as TRL drops it).
    """
    if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
        prompt_ids = prompt_ids[:max_prompt_length] if truncation_mode == "keep_start" else prompt_ids[-max_prompt_length:]
    if bos_id is not None and prompt_ids[:1] != [bos_id]:
        prompt_ids = [bos_id] + prompt_ids
    room = max_length - len(prompt_ids)
    if room < 1:
        return None
    eos = [eos_id] if eos_id is not None else []
    return prompt_ids, (chosen_ids + eos)[:room], (rejected_ids + eos)[:room]


class TokenizeRows:
    """Callable class for Ray Data's map_batches: loads the tokenizer once per actor."""

    def __init__(self, name_or_path: str, revision: str | None, max_length: int, max_prompt_length: int | None,
                 truncation_mode: str, eval_fraction: float, trust_remote_code: bool = False,
                 eval_sources: tuple[int, ...] = (), tokenize_jointly: bool = False) -> None:
        from dpo_ray.modeling import load_tokenizer  # transformers import only where tokenizing happens

        self.tokenizer = load_tokenizer(name_or_path, revision, trust_remote_code)
        self.pairs = PairTokenizer(self.tokenizer, jointly=tokenize_jointly)
        self.lengths = {"max_length": max_length, "max_prompt_length": max_prompt_length, "truncation_mode": truncation_mode}
        self.eval_fraction = eval_fraction
        self.eval_sources = set(eval_sources)  # explicit eval sources: no prompt-hash split at all

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list[Any]] = {k: [] for k in (
            "row_id", "row_hash", "source", "error", "drop_reason", "drop_detail", "warning", "split_key", "is_eval",
            "seq_len", "prompt_ids", "chosen_ids", "rejected_ids", "mixture",
        )}
        mixtures = batch["mixture"] if "mixture" in batch else np.zeros(len(batch["source"]), dtype=np.int64)
        for i in range(len(batch["source"])):
            mixture = int(mixtures[i])
            row = {k: str(batch[k][i]) for k in ROW_FIELDS}
            ids, warning = None, ""
            if not (row["error"] or row["drop_reason"]):
                try:
                    ids, warning = self._ids(row)
                except RowDrop as err:  # the chat template raised (PairTokenizer.render): this row only
                    row["drop_reason"], row["drop_detail"] = err.reason, f"{row['source']}: {err}"
            drop = row["drop_reason"] or ("" if row["error"] or ids is not None else "prompt_too_long")
            if isinstance(ids, str):  # a chat-template drop reason
                drop, ids = ids, None
            p, c, r = ids if ids is not None else ([], [], [])
            rid = row_id(row["prompt"], row["chosen"], row["rejected"])
            out["row_id"].append(rid)
            out["row_hash"].append(row_hash(rid, p, c, r, mixture))
            out["mixture"].append(mixture)
            out["source"].append(row["source"])
            out["error"].append(row["error"])
            out["drop_reason"].append(drop)
            out["drop_detail"].append(row["drop_detail"] or (f"{row['source']}: {drop}" if drop else ""))
            out["warning"].append(warning)
            key = split_key(row["prompt"])
            if self.eval_sources:
                key = 0.0 if mixture in self.eval_sources else 1.0
            out["split_key"].append(key)
            out["is_eval"].append(key < self.eval_fraction)
            out["seq_len"].append(len(p) + max(len(c), len(r)))  # padded width this pair needs
            out["prompt_ids"].append(np.asarray(p, dtype=np.int32))
            out["chosen_ids"].append(np.asarray(c, dtype=np.int32))
            out["rejected_ids"].append(np.asarray(r, dtype=np.int32))
        return {k: _column(v) for k, v in out.items()}

    def _ids(self, row: dict[str, str]) -> tuple[Any, str]:
        """Token ids of one valid row (data/tokenize.py); a str in place of ids is a drop reason."""
        if row["kind"] == "messages":
            pair = self.pairs.chat(*(json.loads(row[k]) for k in ("prompt", "chosen", "rejected")))
            if pair is None:
                return "chat_template_mismatch", ""
            bos_id = None  # the chat template writes BOS where the model wants one
        else:
            pair = self.pairs.text(row["prompt"], row["chosen"], row["rejected"], implicit=row["kind"] == "implicit")
            bos_id = self.pairs.bos_id
        prompt_ids, chosen_ids, rejected_ids, warning = pair
        if not prompt_ids and bos_id is None and row["kind"] == "implicit":
            return "no_common_prompt", ""  # the transcripts share no token: nothing to condition on
        ids = tokenize_pair(prompt_ids, chosen_ids, rejected_ids, bos_id=bos_id, eos_id=None, **self.lengths)
        return ids, warning


def _column(values: list[Any]) -> np.ndarray:
    if values and isinstance(values[0], np.ndarray):
        col = np.empty(len(values), dtype=object)  # ragged token lists
        col[:] = values
        return col
    return np.asarray(values)
