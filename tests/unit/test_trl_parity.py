"""Token ids against TRL 1.16's DPOTrainer, row by row, on real chat tokenizers (no Ray, no training).

TRL's side is its own dataset preparation: DPOTrainer.__init__ runs extract_prompt, the EOS step and
tokenize_fn on train_dataset and on every eval_dataset, one dataset per format (TRL decides the format
from a dataset's first row). Ours is parse -> normalize_record -> TokenizeRows, as Ray Data runs it.
Run with -s to see the identical-row share per family and format.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _chat_families import (
    CONVERSATIONAL, FAMILIES, IMPLICIT, IMPLICIT_MESSAGES, SHAREGPT, STANDARD, build_family_model, has_system,
)
from dpo_ray.data.parse import ROW_FIELDS, normalize_one
from dpo_ray.data.tokenize import TokenizeRows
from dpo_ray.data.formats import SHAREGPT_ROLES

trl = pytest.importorskip("trl")  # a dev extra
COLUMNS = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}


def _records(family: str, eos: str) -> dict[str, list[dict[str, Any]]]:
    """The raw rows of each format (Mistral's template refuses system turns, so those are left out)."""
    keep = (lambda msgs: not has_system(msgs)) if family == "mistral" else (lambda msgs: True)
    return {
        "standard": [{"prompt": p, "chosen": c.replace("{eos}", eos), "rejected": r} for p, c, r in STANDARD],
        "conversational": [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in CONVERSATIONAL if keep(p)],
        "implicit": [{"chosen": c, "rejected": r} for c, r in IMPLICIT],
        "implicit_messages": [{"chosen": c, "rejected": r} for c, r in IMPLICIT_MESSAGES if keep(c)],
        "sharegpt": [rec for rec in SHAREGPT if keep([{"role": SHAREGPT_ROLES[t["from"]]} for t in rec["conversations"]])],
    }


def _as_trl(fmt: str, rec: dict[str, Any]) -> dict[str, Any]:
    """TRL reads role/content messages; a ShareGPT row is the conversational row it stands for."""
    if fmt != "sharegpt":
        return rec
    turn = lambda t: {"role": SHAREGPT_ROLES[t["from"]], "content": t["value"]}  # noqa: E731
    return {"prompt": [turn(t) for t in rec["conversations"]], "chosen": [turn(rec["chosen"])], "rejected": [turn(rec["rejected"])]}


def _trl_ids(model_dir: str, records: dict[str, list[dict[str, Any]]], out: Path) -> dict[str, list[tuple]]:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    sets = {fmt: Dataset.from_list([_as_trl(fmt, r) for r in rows]) for fmt, rows in records.items() if rows}
    args = DPOConfig(output_dir=str(out), report_to="none", max_length=None, use_cpu=True)
    trainer = DPOTrainer(model=model_dir, args=args, train_dataset=sets["standard"], eval_dataset=sets)
    return {fmt: [(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]) for r in ds] for fmt, ds in trainer.eval_dataset.items()}


def _our_ids(model_dir: str, records: dict[str, list[dict[str, Any]]], jointly: bool) -> dict[str, list[tuple]]:
    """(prompt_ids, chosen_ids, rejected_ids, warning) per row of each format; one tokenizer load."""
    normal = [normalize_one(r, f"{fmt}:{i}", fmt="auto", columns=COLUMNS) for fmt, rows in records.items() for i, r in enumerate(rows)]
    batch = {k: np.array([r[k] for r in normal]) for k in ROW_FIELDS}
    out = TokenizeRows(model_dir, None, 4096, None, "keep_start", 0.1, tokenize_jointly=jointly)(batch)
    assert list(out["drop_reason"]) == [""] * len(normal), list(out["drop_detail"])
    rows = [(*(list(map(int, out[k][i])) for k in ("prompt_ids", "chosen_ids", "rejected_ids")), out["warning"][i])
            for i in range(len(normal))]
    by_format, start = {}, 0
    for fmt, recs in records.items():
        by_format[fmt], start = rows[start:start + len(recs)], start + len(recs)
    return by_format


@pytest.fixture
def no_dataset_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A random fingerprint for every datasets transform: map() otherwise dill-hashes its arguments, the tokenizer
    with its whole vocabulary among them (most of this test's time), only to name cache files that these
    in-memory datasets never get; it is what datasets itself falls back to when hashing fails."""
    import datasets.arrow_dataset
    import datasets.fingerprint

    def random_fingerprint(fingerprint: str, transform: Any, transform_args: dict[str, Any]) -> str:
        return datasets.fingerprint.generate_random_fingerprint()

    monkeypatch.setattr(datasets.fingerprint, "update_fingerprint", random_fingerprint)
    monkeypatch.setattr(datasets.arrow_dataset, "update_fingerprint", random_fingerprint)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.usefixtures("no_dataset_hashing")
def test_ids_match_trl_row_by_row(family: str, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    model_dir = build_family_model(family, tmp_path / family)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    records = _records(family, tokenizer.eos_token)
    theirs = _trl_ids(model_dir, records, tmp_path / "trl")
    shares: dict[str, dict[str, str]] = {}
    ours_joint, ours_default = _our_ids(model_dir, records, jointly=True), _our_ids(model_dir, records, jointly=False)
    for fmt, rows in records.items():
        joint = [r[:3] for r in ours_joint[fmt]]
        default, warnings = [r[:3] for r in ours_default[fmt]], [r[3] for r in ours_default[fmt]]
        same = [ours == trl_row for ours, trl_row in zip(default, theirs[fmt])]
        shares[fmt] = {"default": f"{sum(same)}/{len(rows)}",
                       "jointly": f"{sum(a == b for a, b in zip(joint, theirs[fmt]))}/{len(rows)}"}
        # tokenize_jointly=true reproduces TRL token for token.
        assert joint == theirs[fmt], f"{family}/{fmt}: jointly differs from TRL"
        for i, (ours, trl_row) in enumerate(zip(default, theirs[fmt])):
            # The default differs exactly where a given prompt's own ids are not a prefix of the joint
            # ids: TRL then drops the prompt's end from the context; we keep the prompt as it is.
            assert (ours != trl_row) == (warnings[i] == "prompt_not_token_prefix"), f"{family}/{fmt} row {i}"
            if ours != trl_row:
                assert ours[0][: len(trl_row[0])] == trl_row[0] and len(ours[0]) > len(trl_row[0])
                if fmt == "standard":  # prompt + chosen decode to the row's own text
                    text = tokenizer.decode(ours[0] + ours[1], skip_special_tokens=True)
                    assert text.endswith(rows[i]["chosen"].replace(tokenizer.eos_token, ""))
    print(f"\nTRL 1.16 parity, {family}: identical rows " + json.dumps(shares))
