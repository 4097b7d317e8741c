from __future__ import annotations

import math

import torch

from dpo_ray.train.collate import collate_pairs, count_tokens
from dpo_ray.train.logprobs import forward_sequence_stats, sequence_logps, split_pairs
from dpo_ray.modeling import load_model


def test_collate_layout() -> None:
    out = collate_pairs([[1, 5], [1]], [[7, 2], [8, 9, 2]], [[6, 2], [2]], pad_id=0)
    assert out["input_ids"].tolist() == [
        [1, 5, 7, 2], [1, 8, 9, 2],  # chosen rows first
        [1, 5, 6, 2], [1, 2, 0, 0],  # then rejected, right padded
    ]
    assert out["completion_mask"].tolist() == [[0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 1, 1], [0, 1, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]]
    assert count_tokens(out) == 14


def test_sequence_logps_matches_a_brute_force_loop() -> None:
    torch.manual_seed(0)
    batch = collate_pairs([[1, 5, 6], [1]], [[7, 2], [8, 9, 4, 2]], [[3, 2], [2]], pad_id=0)
    n, t = batch["input_ids"].shape
    logits = torch.randn(n, t, 11, dtype=torch.float64)
    stats = sequence_logps(logits, batch["input_ids"], batch["completion_mask"])
    for i in range(n):
        total, count, logit_sum = 0.0, 0, 0.0
        for pos in range(1, t):
            if batch["completion_mask"][i, pos]:
                probs = [math.exp(x) for x in logits[i, pos - 1].tolist()]
                total += math.log(probs[int(batch["input_ids"][i, pos])] / sum(probs))
                count += 1
                logit_sum += sum(logits[i, pos - 1].tolist()) / 11
        assert abs(stats.logps[i].item() - total) < 1e-9
        assert stats.num_tokens[i].item() == count
        assert abs(stats.logits_sum[i].item() - logit_sum) < 1e-9


def test_padding_does_not_change_logps(tiny_model_dir: str) -> None:
    model = load_model(tiny_model_dir).eval()
    alone = collate_pairs([[1, 20, 21]], [[30, 2]], [[31, 2]], pad_id=0)
    padded = collate_pairs([[1, 20, 21], [1, 40, 41, 42, 43, 44]], [[30, 2], [50, 51, 52, 2]], [[31, 2], [53, 2]], pad_id=0)
    with torch.no_grad():
        a = forward_sequence_stats(model, alone).logps
        b = forward_sequence_stats(model, padded).logps
    a_chosen, a_rejected = split_pairs(a)
    b_chosen, b_rejected = split_pairs(b)
    assert torch.allclose(a_chosen[0], b_chosen[0], atol=1e-5)
    assert torch.allclose(a_rejected[0], b_rejected[0], atol=1e-5)


def test_chunked_logps_match_the_plain_path_with_gradients(tiny_model_dir: str) -> None:
    torch.manual_seed(0)
    batch = collate_pairs([[1, 20, 21], [1, 40, 41, 42, 43, 44]], [[30, 31, 32, 2], [50, 51, 52, 2]], [[31, 2], [53, 54, 2]], pad_id=0)
    results = []
    for chunk in (None, 3):
        model = load_model(tiny_model_dir)
        stats = forward_sequence_stats(model, batch, with_wpo=True, chunk_size=chunk)
        (stats.logps.sum() + 0.5 * stats.prefix_logps.sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((stats, grads))
    (plain, g_plain), (chunked, g_chunked) = results
    for field in ("logps", "num_tokens", "logits_sum", "prefix_logps", "wpo_logw"):
        assert torch.allclose(getattr(plain, field), getattr(chunked, field), atol=1e-5), field
    assert g_plain.keys() == g_chunked.keys()
    assert all(torch.allclose(g_plain[n], g_chunked[n], atol=1e-5) for n in g_plain)


def test_length_sorted_scoring_matches_one_forward_with_less_padding(tiny_model_dir: str) -> None:
    from dpo_ray.train.logprobs import sorted_sequence_stats

    model = load_model(tiny_model_dir).eval()
    prompts = [[1, 20, 21], [1, 40, 41, 42, 43, 44], [1, 9], [1, 60, 61, 62]]
    chosen = [[30, 2], [50, 51, 52, 53, 54, 55, 56, 2], [70, 71, 2], [80, 2]]
    rejected = [[31, 32, 33, 34, 35, 2], [57, 2], [72, 2], [81, 82, 83, 2]]
    batch = collate_pairs(prompts, chosen, rejected, pad_id=0)
    with torch.no_grad():
        plain = forward_sequence_stats(model, batch)
    for rows in (1, 3, 4, 8):
        for by_length in (True, False):
            grouped, pads = sorted_sequence_stats(model, batch, rows_per_forward=rows, by_length=by_length)
            for field in ("logps", "num_tokens", "logits_sum", "prefix_logps"):
                assert torch.allclose(getattr(plain, field), getattr(grouped, field), atol=1e-5), (rows, by_length, field)
            assert pads.sum() <= (batch["attention_mask"] == 0).sum()
    assert sorted_sequence_stats(model, batch, rows_per_forward=1)[1].sum() == 0  # one row per forward: no pads
    assert sorted_sequence_stats(model, batch, rows_per_forward=4)[1].sum() < (batch["attention_mask"] == 0).sum()
    unsorted = sorted_sequence_stats(model, batch, rows_per_forward=4, by_length=False)[1].sum()
    assert sorted_sequence_stats(model, batch, rows_per_forward=4)[1].sum() < unsorted
