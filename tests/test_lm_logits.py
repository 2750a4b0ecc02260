"""Answer-token logits of a causal LM and DER++ on them (a VLM): positions, top-k store, matching, by hand."""

import json
from types import SimpleNamespace as Record

import numpy as np
import pytest
import torch

from hf_budgetcl.methods.derpp import DERPP
from hf_budgetcl.methods.lm_logits import answer_logit_mse, answer_positions, top_answer_logits
from hf_budgetcl.training.results import json_default
from tests.helpers import FakeMethodContext

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


class _TinyLM(torch.nn.Module):
    """Just an LM head: DER++ reads the vocabulary from the output embeddings."""

    def __init__(self, vocab: int = 6):
        super().__init__()
        self.lm_head = torch.nn.Linear(4, vocab)

    def get_output_embeddings(self):
        return self.lm_head


def _derpp_on_tiny_lm() -> tuple[DERPP, FakeMethodContext]:
    method = DERPP(derpp_answer_tokens=2, derpp_token_topk=3, derpp_alpha=0.3, derpp_beta=0.5)
    ctx = FakeMethodContext(_TinyLM(), memory=Record(indices=[10]))
    method.setup(ctx)
    return method, ctx


def test_derpp_matches_a_replayed_rows_stored_answer_logits_by_hand():
    method, ctx = _derpp_on_tiny_lm()
    assert method.vocab == 6 and method.slot_bytes(100) == 100 + 2 * 3 * (4 + 4) + 4
    torch.manual_seed(0)
    first = torch.randn(2, 5, 6)
    labels = torch.tensor([[X, X, X, 1, 2], [X, X, X, X, 4]])  # row 0: answer tokens 1, 2; row 1: one token
    ctx.record = Record(slots=[-1, -1], indices=[10, 11])  # two stream rows; only sample 10 is in memory
    method.observe(ctx, {"labels": labels}, first)
    assert set(method.stored) == {10} and method.stored[10][2] == 2
    assert ctx.charges["derpp_store"] == (2 + 1) * 6  # top-k over the vocabulary, each stored answer token
    # Sample 10 replayed behind one pad token, every logit 1 higher: each stored entry is off by exactly 1.
    again = torch.cat([torch.zeros(1, 6), first[0] + 1.0])[None]
    again_labels = torch.cat([torch.tensor([X]), labels[0]])[None]
    ctx.record, ctx.charges = Record(slots=[0], indices=[10]), {}
    loss = method.extra_loss(ctx, {"labels": again_labels}, again)
    ce = torch.nn.functional.cross_entropy(again[0, [3, 4]], torch.tensor([1, 2]))  # the two answer tokens
    assert loss.item() == pytest.approx(0.3 * 1.0 + 0.5 * ce.item(), rel=1e-6)
    assert ctx.charges["derpp_loss"] == 5 * (2 * 3) + 6 * 2 * 6


def test_derpp_answer_token_state_round_trips_through_json():
    method, ctx = _derpp_on_tiny_lm()
    empty = json.loads(json.dumps(method.state_dict(), default=json_default))
    assert np.asarray(empty["values"]).size == 0
    ctx.record = Record(slots=[-1], indices=[10])
    method.observe(ctx, {"labels": torch.tensor([[X, X, 3, 1]])}, torch.randn(1, 4, 6))
    state = json.loads(json.dumps(method.state_dict(), default=json_default))
    restored, _ = _derpp_on_tiny_lm()
    restored.load_state_dict(state)
    (v0, i0, n0), (v1, i1, n1) = method.stored[10], restored.stored[10]
    assert n0 == n1 == 2 and np.array_equal(i0, i1) and np.allclose(v0, v1)
    restored.load_state_dict(empty)
    assert restored.stored == {}


def test_an_image_classifier_with_a_text_vocabulary_in_its_config_is_not_a_language_model():
    """A CLIP classifier's config names a 49,408-token text vocabulary; it has no LM head, so DER++ keeps class logits."""
    from transformers import CLIPConfig, CLIPForImageClassification

    from hf_budgetcl.methods.derpp import vocabulary_size

    tiny = {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = CLIPConfig(text_config=tiny, vision_config={**tiny, "image_size": 8, "patch_size": 4}, num_labels=3)
    assert config.get_text_config().vocab_size > 0
    assert vocabulary_size(CLIPForImageClassification(config)) is None
    assert vocabulary_size(_TinyLM(6)) == 6
