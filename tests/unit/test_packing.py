"""Padding-free (packed) batches and token-budget cuts (issue 20): packed log-probs equal padded ones
on tiny Llama, Qwen and Phi-3 family models, through the one shared log-prob implementation
(chunked LM head, WPO, LD-DPO prefix sums), and a 20-step trajectory packed vs padded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dpo_ray.config import LossConfig
from dpo_ray.modeling import load_model
from dpo_ray.train.collate import budget_cuts, collate_pairs, count_tokens, pack_rows, pair_costs, split_to
from dpo_ray.train.logprobs import forward_sequence_stats, label_layout, sorted_sequence_stats
from dpo_ray.train.objective import batch_objective
from tests._chat_families import build_family_model

FAMILIES = ("llama3", "qwen3", "phi3")


def uneven_pairs(vocab: int, seed: int = 0, n: int = 5) -> dict[str, list[list[int]]]:
    """Pairs of very different lengths: prompts 1..60 tokens, completions 1..40 (one of one token)."""
    rng = np.random.default_rng(seed)
    lengths = [(1, 1, 3), (60, 40, 2), (7, 3, 33), (25, 12, 12), (2, 39, 1)][:n]
    draw = lambda k: rng.integers(3, vocab, size=k).tolist()  # noqa: E731
    return {"prompt_ids": [draw(p) for p, _, _ in lengths], "chosen_ids": [draw(c) for _, c, _ in lengths],
            "rejected_ids": [draw(r) for _, _, r in lengths]}


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_family_model(request.param, Path(tmp_path_factory.mktemp(request.param)))


def test_pack_rows_layout() -> None:
    padded = collate_pairs([[1, 5], [1]], [[7, 2], [8, 9, 2]], [[6, 2], [2]], pad_id=0)
    packed = pack_rows(padded)
    assert packed["input_ids"].tolist() == [[1, 5, 7, 2, 1, 8, 9, 2, 1, 5, 6, 2, 1, 2]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1]]
    assert packed["seq_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3]]
    assert packed["completion_mask"].tolist() == [[0, 0, 1, 1, 0, 1, 1, 1, 0, 0, 1, 1, 0, 1]]
    assert "attention_mask" not in packed and count_tokens(packed) == count_tokens(padded) == 14


def test_a_sequence_never_scores_the_next_ones_first_token() -> None:
    # Two sequences whose completions touch: [p c c][c c] -- the second has no prompt at all.
    completion = torch.tensor([[0, 1, 1, 1, 1]])
    seq_ids = torch.tensor([[0, 0, 0, 1, 1]])
    mask, prefix_mask, seg, n = label_layout(completion, seq_ids, prefix_lengths=torch.tensor([1.0, 5.0]))
    assert n == 2 and mask.tolist() == [[1.0, 1.0, 0.0, 1.0]]  # label 2 -> 3 crosses the boundary
    assert prefix_mask.tolist() == [[1.0, 0.0, 0.0, 1.0]]  # the prefix count restarts in each sequence
    assert seg.tolist() == [[0, 0, 1, 1]]


@pytest.mark.parametrize("chunk_size", [None, 7])
def test_packed_logps_equal_padded(family_model: str, chunk_size: int | None) -> None:
    torch.manual_seed(0)
    model = load_model(family_model, dtype=torch.float32)
    pairs = uneven_pairs(model.config.vocab_size)
    padded = collate_pairs(pairs["prompt_ids"], pairs["chosen_ids"], pairs["rejected_ids"], pad_id=0)
    results = []
    for batch in (padded, pack_rows(padded)):
        model.zero_grad()
        stats = forward_sequence_stats(model, batch, with_wpo=True, chunk_size=chunk_size)
        (stats.logps.sum() + stats.prefix_logps.sum()).backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((stats, grads))
    (a, grad_a), (b, grad_b) = results
    # Sums of up to 80 fp32 token log-probs of about -12 each (a 150k vocabulary): compared per token
    # within 1e-5, and as sums within 1e-6 relative.
    for name in ("logps", "prefix_logps", "logits_sum"):
        per_token_a, per_token_b = getattr(a, name) / a.num_tokens, getattr(b, name) / b.num_tokens
        assert (per_token_a - per_token_b).abs().max() < 1e-5, name
        assert torch.allclose(getattr(a, name), getattr(b, name), rtol=1e-6, atol=1e-5), name
    assert torch.equal(a.num_tokens, b.num_tokens) and torch.allclose(a.wpo_logw, b.wpo_logw, atol=1e-5, rtol=0)
    assert not torch.equal(a.prefix_logps, a.logps)  # LD-DPO's prefix is a real part of the sum here
    # the chunks sum different tokens together (rows x 7 positions vs one row): fp32 order, 1e-4 of the scale
    assert float((grad_a - grad_b).abs().max()) <= 1e-4 * float(grad_a.abs().max())


def test_packed_reference_scoring_equals_padded(family_model: str) -> None:
    model = load_model(family_model, dtype=torch.float32).eval()
    pairs = uneven_pairs(model.config.vocab_size)
    padded = collate_pairs(pairs["prompt_ids"], pairs["chosen_ids"], pairs["rejected_ids"], pad_id=0)
    plain, plain_pads = sorted_sequence_stats(model, padded, rows_per_forward=4)
    packed, packed_pads = sorted_sequence_stats(model, padded, rows_per_forward=4, batch_tokens=100, padding_free=True)
    budget, _ = sorted_sequence_stats(model, padded, rows_per_forward=4, batch_tokens=100)
    for stats in (packed, budget):
        assert torch.allclose(stats.logps, plain.logps, rtol=1e-6, atol=1e-5)
        assert torch.allclose(stats.prefix_logps, plain.prefix_logps, rtol=1e-6, atol=1e-5)
    assert int(packed_pads.sum()) == 0 < int(plain_pads.sum())


def test_an_unpackable_attention_would_be_caught(family_model: str) -> None:
    """The packed check can fail: a model that ignores position_ids boundaries (here: the packed row
    run with an explicit all-ones attention mask, so sequences see each other) differs from padded."""
    model = load_model(family_model, dtype=torch.float32).eval()
    pairs = uneven_pairs(model.config.vocab_size)
    padded = collate_pairs(pairs["prompt_ids"], pairs["chosen_ids"], pairs["rejected_ids"], pad_id=0)
    packed = pack_rows(padded)
    leaky = {**packed, "attention_mask": torch.ones_like(packed["input_ids"])}
    leaky.pop("position_ids")
    with torch.no_grad():
        good = forward_sequence_stats(model, packed).logps
        bad = forward_sequence_stats(model, {**leaky, "seq_ids": packed["seq_ids"]}).logps
        want = forward_sequence_stats(model, padded).logps
    assert torch.allclose(good, want, rtol=1e-6, atol=1e-5) and not torch.allclose(bad, want, atol=1e-3)


def test_budget_cuts() -> None:
    widths, tokens = np.array([2, 2, 4, 4, 10]), np.array([2, 2, 3, 4, 9])
    assert [c.tolist() for c in budget_cuts(widths, tokens, budget=8, packed=False)] == [[0, 1], [2, 3], [4]]
    assert [c.tolist() for c in budget_cuts(widths, tokens, budget=8, packed=True)] == [[0, 1, 2], [3], [4]]
    assert [c.tolist() for c in split_to([np.arange(0, 4), np.arange(4, 5)], 3, tokens)] == [[0, 1], [2, 3], [4]]
    w, t = pair_costs([[1, 2], [1]], [[3], [4, 5, 6]], [[7, 8, 9], [2]])
    assert w.tolist() == [10, 8] and t.tolist() == [8, 6]


def test_padded_budget_cuts_are_fewest_groups_then_fewest_slots() -> None:
    """A greedy fill from the short end takes [0, 1, 2] (9 slots) and leaves 21 slots in 3 groups; the
    cuts take 17 in 3. On random inputs (sorted, as the step sorts them, and unsorted, as the reference
    pass's unsorted order) they match an exhaustive search over every cut."""
    from itertools import combinations

    def cost(groups: list[list[int]], w: list[int]) -> tuple[int, int]:
        return len(groups), sum(len(g) * max(w[i] for i in g) for g in groups)

    cuts = budget_cuts(np.array([1, 1, 3, 3, 3, 3, 3]), np.ones(7), budget=9, packed=False)
    assert [c.tolist() for c in cuts] == [[0, 1], [2, 3, 4], [5, 6]]
    rng = np.random.default_rng(0)
    for trial in range(300):
        n, budget = int(rng.integers(1, 9)), int(rng.integers(4, 40))
        w = rng.integers(1, 12, size=n)
        w = np.sort(w) if trial % 2 else w
        got = [c.tolist() for c in budget_cuts(w, w, budget, packed=False)]
        assert sum(got, []) == list(range(n))
        assert all(len(g) == 1 or len(g) * max(w[g]) <= budget for g in got)
        best = min(cost(g, w.tolist()) for g in (
            [list(range(a, b)) for a, b in zip((0, *points), (*points, n))]
            for k in range(n) for points in combinations(range(1, n), k))
            if all(len(x) == 1 or len(x) * max(w[x]) <= budget for x in g))
        assert cost(got, w.tolist()) == best


def test_packed_trajectory_equals_padded(tiny_model_dir: str) -> None:
    """20 AdamW steps on the same batches, packed and padded, LD-DPO + WPO on: the losses agree within 1e-4."""
    loss = LossConfig(wpo=True, ld_alpha=0.5)
    rng = np.random.default_rng(1)
    batches = []
    for step in range(4):  # 4 batches, 5 passes: 20 steps
        pairs = uneven_pairs(60, seed=step, n=4)
        batch = {k: np.array(v, dtype=object) for k, v in pairs.items()}
        for name in ("ref_chosen_logps", "ref_rejected_logps", "ref_chosen_prefix_logps", "ref_rejected_prefix_logps"):
            batch[name] = rng.normal(-40.0, 5.0, size=4)
        batches.append(batch)
    curves = []
    for padding_free in (False, True):
        torch.manual_seed(0)
        model = load_model(tiny_model_dir, dtype=torch.float32)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        curve = []
        for batch in batches * 5:
            out = batch_objective(model, batch, loss, pad_id=0, device=torch.device("cpu"), padding_free=padding_free)
            optimizer.zero_grad()
            out.result.losses.mean().backward()
            optimizer.step()
            curve.append(float(out.result.losses.detach().mean()))
        curves.append(np.array(curve))
    assert np.abs(curves[0] - curves[1]).max() < 1e-4
    # the same 4 batches 16 steps later score differently: the check compares a moving trajectory
    assert np.abs(curves[0][-4:] - curves[0][:4]).min() > 0.05


def test_packed_reference_scorer_equals_padded(tiny_model_dir: str, pair_rows: list[dict[str, str]]) -> None:
    from dpo_ray.reference.scorer import ReferenceScorer
    from test_invariants import tokenized

    batch = tokenized(tiny_model_dir, pair_rows[:12])
    plain = ReferenceScorer(tiny_model_dir, None, "float32", use_gpu=False)(batch)
    packed = ReferenceScorer(tiny_model_dir, None, "float32", use_gpu=False, batch_tokens=200, padding_free=True)(batch)
    for name in ("ref_chosen_logps", "ref_rejected_logps", "ref_chosen_prefix_logps", "ref_rejected_prefix_logps"):
        assert np.allclose(packed[name], plain[name], rtol=1e-6, atol=1e-5), name
    assert packed["ref_pad_tokens"].sum() == 0 < plain["ref_pad_tokens"].sum()


@pytest.mark.parametrize(("overrides", "message"), [
    (["train.micro_batch_tokens=100", "data.max_length=64"], "below one pair at data.max_length=64"),
    (["train.micro_batch_tokens=512", "loss.type=[sigmoid,sft]"], "loss.type ['sft'] reads the whole micro-batch"),
    (["train.micro_batch_tokens=512", "loss.type=aot"], "loss.type ['aot'] reads the whole micro-batch"),
    (["train.micro_batch_tokens=0"], "train.micro_batch_tokens=0: must be >= 1"),
    (["reference.batch_tokens=0"], "reference.batch_tokens=0: must be >= 1"),
    (["train.logps_chunk_size=16", "train.zero_stage=3"], "does not work with ZeRO-3"),
])
def test_token_budget_settings_that_cannot_work_are_refused(overrides: list[str], message: str) -> None:
    from dpo_ray.config import ConfigError
    from dpo_ray.config_load import load_config

    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, overrides)
    load_config(None, ["train.micro_batch_tokens=256", "train.padding_free=true", "reference.padding_free=true"])


def test_the_packing_check_passes_the_families_and_refuses_opt(family_model: str) -> None:
    import transformers

    from dpo_ray.config_check import PackingUnsupported
    from dpo_ray.modeling import check_packed_attention

    check_packed_attention(load_model(family_model, dtype=torch.float32).eval(), family_model, "train.padding_free")
    opt = transformers.OPTConfig(vocab_size=64, hidden_size=16, ffn_dim=32, num_hidden_layers=1, num_attention_heads=2,
                                 word_embed_proj_dim=16)
    with pytest.raises(PackingUnsupported, match=r"^train.padding_free=true: tiny \(opt, sdpa attention\)"):
        check_packed_attention(transformers.AutoModelForCausalLM.from_config(opt).eval(), "tiny", "train.padding_free")
