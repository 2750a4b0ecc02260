"""Answer-token logits of a causal LM (DER++ on a VLM): positions, top-k store and matching, by hand."""

import torch

from hf_budgetcl.methods.lm_logits import answer_logit_mse, answer_positions, top_answer_logits

X = -100


def test_answer_positions_are_the_logits_before_each_labelled_token():
    labels = torch.tensor([[X, X, 5, 6, X], [X, 7, X, X, X], [X, X, X, X, X]])
    got = answer_positions(labels, max_tokens=4)
    assert [p.tolist() for p in got] == [[1, 2], [0], []]
    assert [p.tolist() for p in answer_positions(labels, max_tokens=1)] == [[1], [0], []]


def test_top_answer_logits_hand_checked_and_zero_padded():
    logits = torch.zeros(1, 4, 3)
    logits[0, 1] = torch.tensor([0.5, 3.0, -1.0])  # predicts the first answer token (label at position 2)
    logits[0, 2] = torch.tensor([2.0, 1.0, 4.0])  # the second
    labels = torch.tensor([[X, X, 1, 2]])
    values, ids, counts = top_answer_logits(logits, labels, max_tokens=3, k=2)
    assert values.shape == ids.shape == (1, 3, 2) and counts.tolist() == [2]
    assert values[0, :2].tolist() == [[3.0, 0.5], [4.0, 2.0]] and ids[0, :2].tolist() == [[1, 0], [2, 0]]
    assert values[0, 2].tolist() == [0.0, 0.0]  # padding for the missing third token


def test_stored_logits_match_the_same_sample_padded_differently():
    """A sample stored from one batch and matched in another where it sits behind two pad tokens: the ordinal of
    each answer token, not its position, pairs the entries."""
    torch.manual_seed(0)
    row = torch.randn(5, 6)
    labels = torch.tensor([X, X, X, 3, 4])
    values, ids, counts = top_answer_logits(row[None], labels[None], max_tokens=4, k=3)
    padded = torch.cat([torch.randn(2, 6), row])[None]
    padded_labels = torch.cat([torch.tensor([X, X]), labels])[None]
    total, n = answer_logit_mse(padded, padded_labels, values, ids, counts)
    assert n == 2 * 3 and total.item() == 0.0
    moved = padded.clone()
    moved[0, 2 + 2, ids[0, 0, 0]] += 2.0  # the first answer token's top logit (logit position 2, shifted by 2)
    total, n = answer_logit_mse(moved, padded_labels, values, ids, counts)
    assert n == 6 and total.item() == 4.0


def test_a_shorter_answer_now_matches_only_its_tokens():
    logits, labels = torch.randn(1, 4, 5), torch.tensor([[X, 1, 2, 3]])
    values, ids, counts = top_answer_logits(logits, labels, max_tokens=4, k=2)
    assert counts.tolist() == [3]
    _, n = answer_logit_mse(logits, torch.tensor([[X, X, X, 3]]), values, ids, counts)
    assert n == 1 * 2
