"""Iterative DPO's pure parts: pairing rules on hand-made scores, the judge by import path and its
checks, prompt reading, seeds and the generator's reproducibility (no Ray)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from dpo_ray.config_check import ConfigError
from dpo_ray.data.parse import DataError
from dpo_ray.online.generate import GenerateRows, sample_seed
from dpo_ray.online.judges import JudgeError, check_scores, import_callable, is_import_path, sentiment_match
from dpo_ray.online.pairing import build_pairs, pairs_for_group
from dpo_ray.online.prompts import read_prompts
from dpo_ray.config_online import OnlineConfig

pytestmark = pytest.mark.unit
ASSETS = Path(__file__).resolve().parents[2] / "pipelines" / "assets"


def test_best_vs_worst_picks_the_extremes_and_breaks_ties_by_index() -> None:
    assert pairs_for_group(["a", "b", "c", "d"], [0.5, 2.0, -1.0, 2.0], "best_vs_worst", 0.0) == ([(1, 2)], "")
    assert pairs_for_group(["a", "b"], [1.0, 1.0], "best_vs_worst", 0.0) == ([], "tie")
    assert pairs_for_group(["a", "b"], [1.0, 1.2], "best_vs_worst", 0.5) == ([], "below_margin")


def test_margin_rule_makes_every_pair_above_the_margin() -> None:
    found, why = pairs_for_group(["a", "b", "c"], [0.0, 1.0, 3.0], "margin", 1.5)
    assert sorted(found) == [(2, 0), (2, 1)] and why == ""


def test_build_pairs_counts_ties_and_keeps_the_scores() -> None:
    groups = [{"prompt": "p1", "responses": ["x", "y"], "scores": [1, 0]},
              {"prompt": "p2", "responses": ["x", "y"], "scores": [2, 2]},
              {"prompt": [{"role": "user", "content": "hi"}], "responses": ["u", "v"], "scores": [0, 3]}]
    rows, stats = build_pairs(groups, "best_vs_worst", 0.0)
    assert (stats.groups, stats.pairs, stats.ties) == (3, 2, 1)
    assert rows[0] == {"prompt": "p1", "chosen": "x", "rejected": "y", "chosen_score": 1.0, "rejected_score": 0.0}
    assert rows[1]["chosen"] == [{"role": "assistant", "content": "v"}]  # a conversational prompt's completion


def test_the_same_text_scored_twice_differently_is_no_pair() -> None:
    rows, stats = build_pairs([{"prompt": "p", "responses": ["x", "x"], "scores": [1, 0]}], "best_vs_worst", 0.0)
    assert rows == [] and stats.duplicate_responses == 1


def test_the_shipped_judge_scores_the_asked_sentiment() -> None:
    prompts = ["Ana asks for a positive review of the lamp.", "Ben asks for a negative review of the tent."]
    assert sentiment_match(prompts, [" The lamp is wonderful.", " The tent is wonderful, really great."]) == [1.0, -2.0]


def test_judge_by_import_path_and_its_errors() -> None:
    assert is_import_path("dpo_ray.online.judges:sentiment_match")
    assert import_callable("dpo_ray.online.judges:sentiment_match", "online.judge") is sentiment_match
    with pytest.raises(ConfigError, match="online.judge=nope.mod:f: cannot import module 'nope.mod'"):
        import_callable("nope.mod:f", "online.judge")
    with pytest.raises(ConfigError, match="has no callable 'missing'"):
        import_callable("dpo_ray.online.judges:missing", "online.judge")


def test_scores_must_be_finite_and_one_per_row() -> None:
    assert check_scores([1, 2.5], 2, "j") == [1.0, 2.5]
    with pytest.raises(JudgeError, match="non-finite score"):
        check_scores([1.0, math.nan], 2, "j")
    with pytest.raises(JudgeError, match="1 scores for 2 rows"):
        check_scores([1.0], 2, "j")


def test_prompts_are_read_once_each_and_a_bad_row_is_named(tmp_path: Path) -> None:
    good = tmp_path / "p.jsonl"
    good.write_text('{"prompt": "a"}\n{"prompt": "a"}\n{"prompt": [{"role": "user", "content": "b"}]}\n')
    assert read_prompts(OnlineConfig(prompts=str(good))) == ["a", [{"role": "user", "content": "b"}]]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"text": "b"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl: line 2: no 'prompt' field"):
        read_prompts(OnlineConfig(prompts=str(bad)))
    empty = tmp_path / "e.jsonl"
    empty.write_text('{"prompt": "  "}\n')
    with pytest.raises(DataError, match="e.jsonl: line 1: the prompt is str"):
        read_prompts(OnlineConfig(prompts=str(empty)))


def test_a_prompts_seed_depends_on_its_text_round_and_purpose_only() -> None:
    seed = sample_seed(0, 1, '"a"', "train")
    assert seed == sample_seed(0, 1, '"a"', "train")
    assert len({seed, sample_seed(0, 2, '"a"', "train"), sample_seed(0, 1, '"b"', "train"),
                sample_seed(0, 1, '"a"', "heldout"), sample_seed(1, 1, '"a"', "train")}) == 5


def test_generated_samples_are_reproducible_for_a_seed_whatever_the_batch() -> None:
    import numpy as np

    gen = GenerateRows(str(ASSETS / "tiny-llama-sft"), generator="dpo_ray.online.generate:TransformersGenerator", n=3,
                       use_gpu=False, dtype="float32", trust_remote_code=False, max_prompt_length=None,
                       truncation_mode="keep_end", settings={"max_new_tokens": 12, "temperature": 1.0, "top_p": 1.0})
    prompts = [json.dumps(p) for p in ("Ana asks for a positive review of the lamp.", "Ben asks for a negative review of the tent.")]
    both = gen({"prompt": np.asarray(prompts), "seed": np.asarray([7, 8])})
    alone = gen({"prompt": np.asarray(prompts[1:]), "seed": np.asarray([8])})
    assert list(both["response"][3:]) == list(alone["response"]) and len(both["response"]) == 6
    other = gen({"prompt": np.asarray(prompts[1:]), "seed": np.asarray([9])})
    assert list(other["response"]) != list(alone["response"])


def test_judge_rows_carry_a_bad_score_as_data(monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from dpo_ray.online.judges import JudgeRows

    rows = JudgeRows("_online_plugins:judge", use_gpu=False)  # tests/_online_plugins.py
    batch = {"prompt": np.asarray([json.dumps("Ana asks for a positive review of the lamp.")] * 2),
             "response": np.asarray([" The lamp is great.", " The lamp is awful."])}
    good = rows(batch)
    assert good["score"].tolist() == [1.0, -1.0] and good["error"].tolist() == ["", ""]
    monkeypatch.setenv("DPO_TEST_JUDGE_NAN", "1")
    bad = rows(batch)  # no exception: Ray Data would log it whole; the driver reads the reason from the rows
    assert all(math.isnan(s) for s in bad["score"]) and all("returned a non-finite score (nan)" in e for e in bad["error"])


END_OF_TURN = {"qwen3": "<|im_end|>", "llama3": "<|eot_id|>", "phi3": "<|end|>", "mistral": "</s>"}


@pytest.mark.parametrize("family", sorted(END_OF_TURN))
def test_chat_families_sample_after_the_training_prompt_and_stop_at_the_end_of_turn(family: str, tmp_path: Path) -> None:
    """Real chat tokenizers (tests/fixtures/tokenizers): the generator's prompt ids are the ids the data
    stage gives the same prompt, text or messages, and a sample ends at the template's end of turn as
    well as at EOS (Phi-3's turn ends with <|end|>, its EOS is <|endoftext|>)."""
    import numpy as np

    from _chat_families import build_family_model
    from dpo_ray.data.tokenize import PairTokenizer, tokenize_pair
    from dpo_ray.modeling import load_tokenizer
    from dpo_ray.online.generate import prompt_token_ids, stop_ids

    model_dir = build_family_model(family, tmp_path / family)
    tok = load_tokenizer(model_dir)
    pairs = PairTokenizer(tok, jointly=False)
    messages = [{"role": "user", "content": "Write a positive review of the lamp."}]
    trained = pairs.chat(messages, [{"role": "assistant", "content": "Great."}], [{"role": "assistant", "content": "Bad."}])
    assert tokenize_pair(*trained[:3], bos_id=None, eos_id=None, max_length=512)[0] == prompt_token_ids(pairs, messages, None, "keep_end")
    text = "Ana asks for a positive review of the lamp."
    trained = pairs.text(text, " Great.", " Bad.")
    assert tokenize_pair(*trained[:3], bos_id=pairs.bos_id, eos_id=None, max_length=512)[0] == prompt_token_ids(pairs, text, None, "keep_end")

    stops = stop_ids(tok, None)
    assert stops[0] == tok.eos_token_id and END_OF_TURN[family] in tok.convert_ids_to_tokens(stops)
    gen = GenerateRows(model_dir, generator="dpo_ray.online.generate:TransformersGenerator", n=2, use_gpu=False,
                       dtype="float32", trust_remote_code=False, max_prompt_length=None, truncation_mode="keep_end",
                       settings={"max_new_tokens": 4, "temperature": 1.0, "top_p": 1.0})
    eot = tok.convert_tokens_to_ids(END_OF_TURN[family])
    assert gen.generator.until_eos([5, 6, eot, 7]) == [5, 6] and gen.generator.until_eos([5, 6]) == [5, 6]
    out = gen({"prompt": np.asarray([json.dumps(messages), json.dumps(text)]), "seed": np.asarray([1, 2])})
    assert len(out["response"]) == 4 and all(0 <= t <= 4 for t in out["tokens"])


def test_a_reward_model_judge_scores_each_row_as_it_would_alone(tmp_path: Path) -> None:
    """online.judge as a local reward model dir (AutoModelForSequenceClassification, first logit):
    finite scores, one per row, and a row's score does not depend on the rows padded beside it."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from dpo_ray.online.judges import RewardModelJudge, load_judge

    tokenizer = AutoTokenizer.from_pretrained(ASSETS / "tiny-llama")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    judge = load_judge(str(tmp_path / "rm"))
    assert isinstance(judge, RewardModelJudge)
    prompts = ["Ana asks for a positive review of the lamp.", [{"role": "user", "content": "Review the tent."}], "Ben asks."]
    responses = [" The lamp is great.", " The tent is awful, really terrible and flimsy.", " Fine."]
    together = judge(prompts, responses)
    alone = [judge([p], [r])[0] for p, r in zip(prompts, responses)]
    assert len(together) == 3 and all(math.isfinite(s) for s in together)
    assert together == pytest.approx(alone, abs=1e-5) and len(set(together)) == 3
