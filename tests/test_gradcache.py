"""CachedSupCon (GradCache) gives the loss and parameter gradients of plain SupCon on the full batch.

Dropout is ON throughout. The reference embeds the same mini-batches in one graph from the same RNG seed, so
it draws the same dropout masks the cached step draws in its first (no-grad) pass; the re-embedding pass only
matches if the RNG state is restored.
"""

from __future__ import annotations

import pytest
import torch

from bookmatch.training import gradcache
from bookmatch.training.gradcache import CachedSupCon, split_inputs
from bookmatch.training.losses import SupConLoss, combine_losses, pair_ce_loss

LABELS = torch.tensor([0, 1, 0, 2, 1, 0, 3, 4, 4, 2, 5, 0])  # several chunks per book, some books alone


def _encoder(dropout: float = 0.3) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(10, 16, dtype=torch.float64),
        torch.nn.GELU(),
        torch.nn.Dropout(dropout),
        torch.nn.Linear(16, 8, dtype=torch.float64),
    )


def _inputs() -> torch.Tensor:
    return torch.randn(len(LABELS), 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _grads(module: torch.nn.Module) -> list[torch.Tensor]:
    """Parameter gradients (None for parameters the loss does not reach, e.g. BERT's unused pooler)."""
    return [None if p.grad is None else p.grad.clone() for p in module.parameters()]


def _reference(model, inputs, mini_batch_size, seed, loss_fn):
    model.zero_grad()
    torch.manual_seed(seed)
    embeddings = torch.cat([model(mini) for mini in split_inputs(inputs, mini_batch_size)])
    loss = loss_fn(embeddings, LABELS)["contrastive_loss"]
    loss.backward()
    return loss.detach(), _grads(model)


@pytest.mark.parametrize("mini_batch_size", [1, 3, 5, 12, 40])
def test_cached_supcon_matches_full_batch_supcon_with_dropout(mini_batch_size):
    model, inputs, loss_fn = _encoder(), _inputs(), SupConLoss(temperature=0.1)
    expected_loss, expected_grads = _reference(model, inputs, mini_batch_size, seed=7, loss_fn=loss_fn)

    model.zero_grad()
    torch.manual_seed(7)
    value = CachedSupCon(loss_fn, mini_batch_size).step(model, inputs, LABELS)

    assert not value.requires_grad
    assert torch.allclose(value, expected_loss, rtol=1e-12)
    for grad, expected in zip(_grads(model), expected_grads):
        assert torch.allclose(grad, expected, rtol=1e-9, atol=1e-12)


def test_without_rng_restore_the_gradients_would_differ(monkeypatch):
    """Guards the test above: with dropout on, skipping the RNG replay breaks the equality."""
    model, inputs, loss_fn = _encoder(), _inputs(), SupConLoss(temperature=0.1)
    _, expected_grads = _reference(model, inputs, 3, seed=7, loss_fn=loss_fn)
    monkeypatch.setattr(gradcache.RandContext, "__enter__", lambda self: None)
    monkeypatch.setattr(gradcache.RandContext, "__exit__", lambda self, *exc: None)
    model.zero_grad()
    torch.manual_seed(7)
    CachedSupCon(loss_fn, 3).step(model, inputs, LABELS)
    assert not all(torch.allclose(g, e, atol=1e-6) for g, e in zip(_grads(model), expected_grads))


def test_step_leaves_the_caller_rng_where_the_plain_forward_would():
    model, inputs = _encoder(), _inputs()
    torch.manual_seed(3)
    for mini in split_inputs(inputs, 5):
        model(mini)
    after_plain = torch.rand(4)
    torch.manual_seed(3)
    CachedSupCon(SupConLoss(), 5).step(model, inputs, LABELS)
    assert torch.equal(torch.rand(4), after_plain)


def test_extra_full_batch_terms_and_tuple_outputs_match_the_combined_loss():
    """Pairs: rows [0, P) are text1, [P, 2P) text2; a pair head over (u, v) adds CE next to SupCon."""
    pairs = 6
    book_labels = LABELS
    pair_labels = torch.tensor([1, 0, 1, 1, 0, 0])
    weights = {"contrastive_loss": 0.2}
    model, inputs = _encoder(), _inputs()
    projection = torch.nn.Linear(8, 4, dtype=torch.float64)
    head = torch.nn.Linear(32, 2, dtype=torch.float64)

    def embed(mini):
        pooled = model(mini)
        return projection(pooled), pooled

    def pair_terms(outputs):
        _, pooled = outputs
        u, v = pooled[:pairs], pooled[pairs:]
        return pair_ce_loss(head(torch.cat([u, v, (u - v).abs(), u * v], dim=-1)), pair_labels)

    modules = [model, projection, head]
    for module in modules:
        module.zero_grad()
    torch.manual_seed(11)
    pieces = [embed(mini) for mini in split_inputs(inputs, 4)]
    outputs = tuple(torch.cat([p[i] for p in pieces]) for i in range(2))
    terms = {**SupConLoss(0.1)(outputs[0], book_labels), **pair_terms(outputs)}
    expected_total, _ = combine_losses(terms, weights)
    expected_total.backward()
    expected = [g for m in modules for g in _grads(m)]

    for module in modules:
        module.zero_grad()
    torch.manual_seed(11)
    total, logged = CachedSupCon(SupConLoss(0.1), 4).step_with_terms(embed, inputs, book_labels, pair_terms, weights)

    assert torch.allclose(total, expected_total.detach(), rtol=1e-12)
    assert set(logged) == {"contrastive_loss", "contrastive_global", "ce_loss"}
    for grad, ref in zip([g for m in modules for g in _grads(m)], expected):
        assert torch.allclose(grad, ref, rtol=1e-9, atol=1e-12)


def test_dict_inputs_with_a_tiny_bert_and_dropout(tiny_encoder_dir):
    from transformers import AutoModel

    torch.manual_seed(0)
    bert = AutoModel.from_pretrained(tiny_encoder_dir)
    bert.train()
    assert bert.config.hidden_dropout_prob > 0
    generator = torch.Generator().manual_seed(5)
    input_ids = torch.randint(5, bert.config.vocab_size, (8, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[::3, 8:] = 0
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 3])

    def embed(mini):
        hidden = bert(**mini).last_hidden_state
        mask = mini["attention_mask"][..., None].to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1)

    loss_fn = SupConLoss(temperature=0.05)
    bert.zero_grad()
    torch.manual_seed(9)
    reference = loss_fn(torch.cat([embed(m) for m in split_inputs(inputs, 3)]), labels)["contrastive_loss"]
    reference.backward()
    expected = _grads(bert)

    bert.zero_grad()
    torch.manual_seed(9)
    value = CachedSupCon(loss_fn, mini_batch_size=3).step(embed, inputs, labels)
    assert torch.allclose(value, reference.detach(), rtol=1e-6)
    grads = _grads(bert)
    assert [g is None for g in grads] == [g is None for g in expected]
    assert sum(g is not None for g in grads) > 30
    for grad, ref in zip(grads, expected):
        if ref is not None:
            assert torch.allclose(grad, ref, rtol=1e-4, atol=1e-6)


def test_split_inputs_rejects_inconsistent_batches():
    with pytest.raises(ValueError, match="batch size"):
        split_inputs({"a": torch.zeros(4, 2), "b": torch.zeros(3, 2)}, 2)
    parts = split_inputs((torch.arange(5), torch.arange(5) * 2), 2)
    assert [p[1].tolist() for p in parts] == [[0, 2], [4, 6], [8]]
    assert isinstance(parts[0], tuple)
    with pytest.raises(ValueError, match="mini_batch_size"):
        CachedSupCon(SupConLoss(), 0)
