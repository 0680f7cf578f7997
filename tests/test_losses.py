"""Losses against plain, slow references written here (float64 double loops)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bookmatch.training.losses import (
    GradientReversal,
    SupConLoss,
    TopicAdversary,
    combine_losses,
    distillation_loss,
    grad_reverse,
    independence_loss,
    pair_ce_loss,
)


def reference_supcon(embeddings: torch.Tensor, labels: list[int], temperature: float) -> torch.Tensor:
    """Khosla et al. L_out, one anchor and one positive at a time."""
    z = F.normalize(embeddings, dim=-1)
    n = len(labels)
    anchor_losses = []
    for i in range(n):
        positives = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denominator = sum(torch.exp(z[i] @ z[a] / temperature) for a in range(n) if a != i)
        terms = [torch.log(torch.exp(z[i] @ z[p] / temperature) / denominator) for p in positives]
        anchor_losses.append(-sum(terms) / len(positives))
    return sum(anchor_losses) / len(anchor_losses)


# Several chunks of one book per batch, plus books with a single chunk (anchors without positives).
LABEL_PATTERNS = [
    [0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4, 5],
    [7, 1, 7, 2, 1, 7, 9],
    [0, 1, 0, 1],
]


@pytest.mark.parametrize("labels", LABEL_PATTERNS)
@pytest.mark.parametrize("temperature", [0.05, 0.5])
def test_supcon_matches_reference_value_and_gradient(labels, temperature):
    torch.manual_seed(len(labels))
    embeddings = torch.randn(len(labels), 16, dtype=torch.float64, requires_grad=True)
    expected = reference_supcon(embeddings, labels, temperature)
    (expected_grad,) = torch.autograd.grad(expected, embeddings)

    out = SupConLoss(temperature=temperature)(embeddings, torch.tensor(labels))
    (grad,) = torch.autograd.grad(out["contrastive_loss"], embeddings)

    assert torch.allclose(out["contrastive_loss"], expected, rtol=1e-10, atol=1e-12)
    assert torch.allclose(out["contrastive_global"], expected, rtol=1e-10, atol=1e-12)
    assert torch.allclose(grad, expected_grad, rtol=1e-8, atol=1e-12)


def test_supcon_is_scale_invariant_and_rewards_clustered_books():
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = SupConLoss(temperature=0.1)
    random_embeddings = torch.randn(6, 8, dtype=torch.float64)
    centres = torch.randn(3, 8, dtype=torch.float64) * 5
    clustered = centres[labels] + 0.01 * torch.randn(6, 8, dtype=torch.float64)
    random_value = loss(random_embeddings, labels)["contrastive_loss"]
    assert torch.allclose(loss(random_embeddings * 7.0, labels)["contrastive_loss"], random_value)
    assert loss(clustered, labels)["contrastive_loss"] < random_value


def test_supcon_without_any_positive_is_zero_and_still_differentiable():
    embeddings = torch.randn(4, 8, requires_grad=True)
    out = SupConLoss()(embeddings, torch.tensor([0, 1, 2, 3]))
    assert out["contrastive_loss"].item() == 0.0
    out["contrastive_loss"].backward()
    assert embeddings.grad is not None and torch.all(embeddings.grad == 0)


def test_supcon_bfloat16_input_is_computed_in_float32():
    torch.manual_seed(1)
    labels = [0, 0, 1, 1, 1, 2]
    embeddings = torch.randn(6, 32)
    out = SupConLoss()(embeddings.bfloat16(), torch.tensor(labels))
    assert out["contrastive_loss"].dtype == torch.float32
    expected = reference_supcon(embeddings.bfloat16().double(), labels, 0.05)
    assert math.isclose(out["contrastive_loss"].item(), expected.item(), rel_tol=1e-5)


def test_supcon_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="embeddings"):
        SupConLoss()(torch.randn(4, 8), torch.tensor([0, 1, 0]))


def test_pair_ce_matches_manual_cross_entropy():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5], [-3.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1])
    expected = -sum(logits[i, labels[i]] - torch.logsumexp(logits[i], 0) for i in range(3)) / 3
    assert torch.allclose(pair_ce_loss(logits, labels)["ce_loss"], expected)


def test_distillation_matches_manual_kl_times_t_squared():
    torch.manual_seed(2)
    student = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(5, 2, dtype=torch.float64)
    t = 2.0
    expected = 0.0
    for i in range(5):
        p_teacher = torch.softmax(teacher[i] / t, 0)
        p_student = torch.softmax(student[i] / t, 0)
        expected = expected + sum(p_teacher[k] * torch.log(p_teacher[k] / p_student[k]) for k in range(2))
    expected = expected / 5 * t**2
    out = distillation_loss(student, teacher, temperature=t)["distill_loss"]
    assert torch.allclose(out, expected, rtol=1e-10)
    # Equal distributions give zero; the teacher gets no gradient.
    teacher_param = teacher.clone().requires_grad_(True)
    same = distillation_loss(teacher_param, teacher_param, temperature=t)["distill_loss"]
    assert abs(same.item()) < 1e-12
    out.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_gradient_reversal_flips_and_scales_the_gradient():
    x = torch.randn(3, 4, requires_grad=True)
    weights = torch.randn(3, 4)
    (plain,) = torch.autograd.grad((x * weights).sum(), x)
    (reversed_grad,) = torch.autograd.grad((GradientReversal.apply(x, 0.3) * weights).sum(), x)
    assert torch.allclose(reversed_grad, -0.3 * plain)
    assert torch.equal(grad_reverse(x, 1.0), x)


def test_topic_adversary_trains_classifier_normally_and_reverses_encoder_gradient():
    torch.manual_seed(3)
    encoder = torch.nn.Linear(6, 8)
    adversary = TopicAdversary(in_dim=8, num_topics=3, lambda_=0.5, dropout=0.0)
    inputs, topics = torch.randn(10, 6), torch.tensor([0, 1, 2, 0, 1, 2, -1, 0, 1, 2])

    out = adversary(encoder(inputs), topics)
    out["topic_adv_loss"].backward()
    reversed_encoder_grad = encoder.weight.grad.clone()
    classifier_grad = adversary.classifier[0].weight.grad.clone()

    encoder.zero_grad()
    adversary.zero_grad()
    # The same classifier without reversal: the plain cross-entropy over known topics.
    logits = adversary.classifier(encoder(inputs))
    plain = F.cross_entropy(logits[topics >= 0], topics[topics >= 0])
    assert torch.allclose(out["topic_adv_loss"], plain)
    plain.backward()
    assert torch.allclose(adversary.classifier[0].weight.grad, classifier_grad)
    assert torch.allclose(reversed_encoder_grad, -0.5 * encoder.weight.grad, atol=1e-7)
    assert 0.0 <= out["topic_adv_accuracy"].item() <= 1.0


def test_independence_loss_matches_cross_covariance_and_vanishes_when_independent():
    torch.manual_seed(4)
    x = torch.randn(12, 5, dtype=torch.float64)
    ids = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    onehot = F.one_hot(ids, 3).double()
    expected = torch.zeros((), dtype=torch.float64)
    xc, yc = x - x.mean(0), onehot - onehot.mean(0)
    for d in range(5):
        for k in range(3):
            expected += (sum(xc[i, d] * yc[i, k] for i in range(12)) / 11) ** 2
    assert torch.allclose(independence_loss(x, onehot, normalize=False)["independence_loss"], expected)
    assert torch.allclose(independence_loss(x, ids, normalize=False)["independence_loss"], expected)
    # An embedding identical for every row carries no topic information; one fixed per topic carries all of it.
    constant_per_topic = x[:3].repeat(4, 1)  # rows follow the ids 0, 1, 2, 0, 1, 2, ...
    topic_free = torch.randn(1, 5, dtype=torch.float64).repeat(12, 1)
    assert independence_loss(topic_free, ids)["independence_loss"].item() < 1e-20
    assert independence_loss(constant_per_topic, ids)["independence_loss"].item() > 1e-3


def test_combine_losses_weights_sums_and_logs():
    terms = {
        "ce_loss": torch.tensor(1.5, requires_grad=True),
        "contrastive_loss": torch.tensor(2.0, requires_grad=True),
        "distill_loss": torch.tensor(float("nan")),
        "contrastive_global": torch.tensor(9.0),
    }
    total, logged = combine_losses(terms, {"contrastive_loss": 0.2, "distill_loss": 0.0})
    assert math.isclose(total.item(), 1.5 + 0.2 * 2.0, rel_tol=1e-6)
    total.backward()
    assert math.isclose(terms["contrastive_loss"].grad.item(), 0.2, rel_tol=1e-6)
    assert logged["contrastive_global"] == 9.0 and math.isclose(logged["loss"], 1.9, rel_tol=1e-6)
    assert set(logged) == {"ce_loss", "contrastive_loss", "distill_loss", "contrastive_global", "loss"}
    with pytest.raises(ValueError, match="no loss term"):
        combine_losses({"contrastive_global": torch.tensor(1.0)}, {})
