"""Tokenization details TRL 1.16 parity needs, on real tokenizers (tests/fixtures/tokenizers); ShareGPT
rows. No Ray (the tokenization version in both cache keys: tests/ray/test_tokenization_keys.py)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from _chat_families import unpack_tokenizer
from dpo_ray.data.parse import ROW_FIELDS, parse_file
from dpo_ray.data.report import build_data_report, summarize_block
from dpo_ray.data.formats import RowDrop, normalize_record
from dpo_ray.data.tokenize import PairTokenizer, TokenizeRows, adds_prefix_space, common_prefix_length

COLUMNS = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tokenizers")
    return {f: str(unpack_tokenizer(f, root / f)) for f in ("qwen3", "phi3", "mistral")}


def _tokenize(model_dir: str, records: list[dict[str, Any]], **kwargs: Any) -> dict[str, np.ndarray]:
    content = "".join(json.dumps(r) + "\n" for r in records).encode()
    rows = parse_file("rows.jsonl", content, fmt="auto", columns=COLUMNS)
    batch = {k: np.array([r[k] for r in rows]) for k in ROW_FIELDS}
    return TokenizeRows(model_dir, None, 512, None, "keep_start", 0.1, **kwargs)(batch)


def _tokens(tokenizer: Any, ids: Any) -> list[str]:
    return tokenizer.convert_ids_to_tokens([int(i) for i in ids])


# ---------------------------------------------------------------- ShareGPT

def test_sharegpt_rows_are_read_with_system_turns() -> None:
    rec = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi?"}],
           "chosen": {"from": "gpt", "value": "Hello."}, "rejected": {"from": "gpt", "value": "Go away."}}
    row = normalize_record(rec, fmt="auto", columns=COLUMNS)
    assert row["kind"] == "messages" and normalize_record(rec, fmt="sharegpt", columns=COLUMNS) == row
    assert json.loads(row["prompt"]) == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    assert json.loads(row["chosen"]) == [{"role": "assistant", "content": "Hello."}]
    # LLaMA-Factory's optional system column becomes the first turn; chosen may be a list of turns.
    rec2 = {"conversations": [{"from": "human", "value": "Hi?"}], "system": "Sys.",
            "chosen": [{"from": "gpt", "value": "A"}], "rejected": [{"from": "gpt", "value": "B"}]}
    assert json.loads(normalize_record(rec2, fmt="auto", columns=COLUMNS)["prompt"])[0] == {"role": "system", "content": "Sys."}


@pytest.mark.parametrize("rec, detail", [
    ({"conversations": [{"from": "robot", "value": "x"}], "chosen": {"from": "gpt", "value": "a"}, "rejected": {"from": "gpt", "value": "b"}}, "'conversations'"),
    ({"conversations": [{"from": "human", "value": "x"}], "chosen": {"from": "gpt", "value": 3}, "rejected": {"from": "gpt", "value": "b"}}, "'chosen'"),
    ({"conversations": [], "chosen": {"from": "gpt", "value": "a"}, "rejected": {"from": "gpt", "value": "b"}}, "no turns"),
])
def test_bad_sharegpt_rows_are_bad_messages(rec: dict[str, Any], detail: str) -> None:
    with pytest.raises(RowDrop, match=detail) as err:
        normalize_record(rec, fmt="auto", columns=COLUMNS)
    assert err.value.reason == "bad_messages"


# ---------------------------------------------------------------- the cases, on real tokenizers

def test_hh_prompt_is_cut_at_the_common_token_prefix(family_dirs: dict[str, str]) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(family_dirs["qwen3"])
    hh = {"chosen": "\n\nHuman: How are you?\n\nAssistant: I am fine.", "rejected": "\n\nHuman: How are you?\n\nAssistant: It's fine."}
    out = _tokenize(family_dirs["qwen3"], [hh])
    # The characters agree up to "Assistant: I"; the tokens only up to ":" (" I" vs " It").
    assert tok.decode(out["prompt_ids"][0]) == "\n\nHuman: How are you?\n\nAssistant:"
    assert _tokens(tok, out["chosen_ids"][0])[:2] == ["ĠI", "Ġam"] and _tokens(tok, out["rejected_ids"][0])[0] == "ĠIt"
    assert out["warning"][0] == ""  # the cut is ours to choose: no inference prompt is changed


def test_chat_completion_ends_with_the_template_end_of_turn_once(family_dirs: dict[str, str]) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(family_dirs["phi3"])
    rec = {"prompt": [{"role": "user", "content": "Sky?"}], "chosen": [{"role": "assistant", "content": "Blue."}],
           "rejected": [{"role": "assistant", "content": "Green."}]}
    out = _tokenize(family_dirs["phi3"], [rec])
    assert _tokens(tok, out["chosen_ids"][0])[-3:] == [".", "<|end|>", "<|endoftext|>"]  # no second EOS
    assert int(out["prompt_ids"][0][0]) != tok.bos_token_id  # this template writes no BOS, so none is added


def test_sentencepiece_completion_gains_no_prefix_space(family_dirs: dict[str, str]) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(family_dirs["phi3"])
    assert adds_prefix_space(tok) and not adds_prefix_space(AutoTokenizer.from_pretrained(family_dirs["qwen3"]))
    pairs = PairTokenizer(tok, jointly=False)
    assert _tokens(tok, pairs.encode("Blue"))[0].startswith("▁")  # on its own, as the start of a text
    assert not _tokens(tok, pairs.continuation("Blue"))[0].startswith("▁")  # as the rest of one
    rows = [{"prompt": "Answer: ", "chosen": "Blue", "rejected": "Green"},
            {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}]
    out = _tokenize(family_dirs["phi3"], rows)
    for i, row in enumerate(rows):  # the text trained on is the text in the file
        text = tok.decode([int(t) for t in [*out["prompt_ids"][i], *out["chosen_ids"][i]]], skip_special_tokens=True)
        assert text == row["prompt"] + row["chosen"]
    assert list(out["warning"]) == ["prompt_not_token_prefix", ""]  # "Answer:" + " " vs "Answer:" + " Blue"


def test_joint_mode_cuts_where_prompt_and_completion_merge(family_dirs: dict[str, str]) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(family_dirs["qwen3"])
    row = {"prompt": "Answer: ", "chosen": "Blue", "rejected": "Green"}
    own, joint = _tokenize(family_dirs["qwen3"], [row]), _tokenize(family_dirs["qwen3"], [row], tokenize_jointly=True)
    assert _tokens(tok, own["prompt_ids"][0]) == ["Answer", ":", "Ġ"]  # the prompt as a model is given it
    assert _tokens(tok, joint["prompt_ids"][0]) == ["Answer", ":"]  # TRL: the trailing space merged away
    assert _tokens(tok, joint["chosen_ids"][0]) == ["ĠBlue", "<|im_end|>"]
    assert common_prefix_length([1, 2, 3], [1, 2, 4, 5]) == 2


def test_a_chat_template_that_raises_drops_that_row(family_dirs: dict[str, str]) -> None:
    import pandas as pd
    from transformers import AutoTokenizer

    user = [{"role": "user", "content": "Sky?"}]
    system = [{"role": "system", "content": "Be brief."}, *user]  # Mistral v0.2's template raises on a system turn
    answers = {"chosen": [{"role": "assistant", "content": "Blue."}], "rejected": [{"role": "assistant", "content": "Green."}]}
    out = _tokenize(family_dirs["mistral"], [{"prompt": user, **answers}, {"prompt": system, **answers}])
    assert list(out["drop_reason"]) == ["", "chat_template_error"]
    assert out["drop_detail"][1] == "rows.jsonl:2: chat template error: Conversation roles must alternate user/assistant/user/assistant/..."
    assert len(out["prompt_ids"][1]) == 0 and len(out["chosen_ids"][0]) > 0
    flags = pd.DataFrame({k: list(out[k]) for k in ("source", "error", "drop_reason", "drop_detail", "warning", "is_eval", "mixture", "row_hash")})
    report = build_data_report(summarize_block(flags), max_drop_fraction=0.05)
    assert report["dropped"] == {"chat_template_error": 1} and report["drop_fraction"] == 0.5  # above it: the run stops

    tok = AutoTokenizer.from_pretrained(family_dirs["mistral"])
    tok.chat_template = None  # not the template raising: a tokenizer without one is an error, not a drop
    with pytest.raises(ValueError, match="chat_template"):
        PairTokenizer(tok, jointly=False).chat(user, answers["chosen"], answers["rejected"])
