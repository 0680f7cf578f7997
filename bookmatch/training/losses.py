"""Training losses. Each takes embeddings or logits plus plain arguments and returns a dict of named terms.

Keys ending in `_loss` are differentiable terms that `combine_losses` weights and sums; any other key (such as
`contrastive_global`) is a detached value for logging only.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from bookmatch.training.distributed import (
    all_reduce_sum,
    gather_no_grad,
    gather_sizes,
    gather_with_grad,
    is_distributed,
)


def _as_float(tensor: torch.Tensor) -> torch.Tensor:
    """Half-precision activations (bf16 autocast) lose too much in exp/logsumexp: compute losses in float32."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


class SupConLoss(nn.Module):
    """Supervised contrastive loss (Khosla et al. 2020, "L_out") over the (global) in-batch examples.

    For anchor i with positives P(i) (every other example with the same label) and all other examples A(i):
        l_i = -1/|P(i)| * sum_{p in P(i)} log( exp(z_i.z_p / T) / sum_{a in A(i)} exp(z_i.z_a / T) )
    and the loss is the mean of l_i over the anchors that have at least one positive (the others are excluded,
    they still act as negatives). Embeddings are L2-normalised inside.

    Distributed (rank r of W, each with its own rows): embeddings are gathered WITH gradients and labels
    without, so every rank sees the global batch of M rows; rank r computes l_i only for its own anchors
    (global rows offset by the sizes of ranks < r) against all M rows. With P the global number of anchors
    that have a positive, rank r returns

        contrastive_loss_r = (W / P) * sum_{i in rank r, i valid} l_i

    Why W / P: the all_gather backward sums into each rank the gradients that every rank's loss sends to its
    rows, so the gradient a rank's parameters receive is d(sum_r contrastive_loss_r)/d(own rows) pulled back
    through its own encoder. DDP then AVERAGES these over ranks: (1/W) * sum_r d(loss_r) = (1/W) * (W/P) *
    d(sum_i l_i) = d(mean_i l_i), exactly the single-process gradient on the concatenated batch. The mean of
    `contrastive_loss` over ranks is also the global loss; `contrastive_global` holds it (all-reduced,
    detached) on every rank for logging. With one process both keys equal the plain SupCon loss.

    `gather_with_grad=False` (open_clip's cheaper option) gathers the other ranks' rows without gradients:
    the loss value is unchanged but gradients through the other ranks' copies are dropped, so they are no
    longer exact.
    """

    def __init__(self, temperature: float = 0.05, rank: int = 0, world_size: int = 1, gather_with_grad: bool = True):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"SupConLoss temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.rank = rank
        self.world_size = world_size
        self.gather_with_grad = gather_with_grad

    def _gather(self, z: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Global embeddings, global labels, and the global row of this rank's first anchor."""
        if not is_distributed(self.world_size):
            return z, labels, 0
        import torch.distributed as dist

        if dist.get_rank() != self.rank or dist.get_world_size() != self.world_size:
            # A wrong rank would silently mask the wrong diagonal and mis-scale the gradients.
            raise ValueError(
                f"SupConLoss built for rank {self.rank} of {self.world_size}, but this process is rank "
                f"{dist.get_rank()} of {dist.get_world_size()}; pass the process group's rank and world size"
            )
        sizes = gather_sizes(z, self.world_size)
        offset = sum(sizes[: self.rank])
        all_labels = gather_no_grad(labels, self.world_size, sizes)
        if self.gather_with_grad:
            all_z = gather_with_grad(z, self.world_size, sizes)
        else:
            # Put the local rows (which carry gradients) back in place of their detached copies.
            gathered = gather_no_grad(z, self.world_size, sizes)
            all_z = torch.cat([gathered[:offset], z, gathered[offset + z.shape[0] :]], dim=0)
        return all_z, all_labels, offset

    embedding_ndim = 2  # (N, D); subclasses that compare token matrices take (N, L, D)

    def prepare(self, embeddings: torch.Tensor) -> torch.Tensor:
        """What is gathered and compared: the L2-normalised embeddings in float32."""
        return F.normalize(_as_float(embeddings), dim=-1)

    def similarities(self, z: torch.Tensor, all_z: torch.Tensor) -> torch.Tensor:
        """(n, m) similarities of this rank's rows against the global batch: cosines."""
        return z @ all_z.T

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if embeddings.ndim != self.embedding_ndim or labels.ndim != 1 or embeddings.shape[0] != labels.shape[0]:
            shape = "(N, D)" if self.embedding_ndim == 2 else "(N, L, D)"
            raise ValueError(
                f"{type(self).__name__} expects embeddings {shape} and labels (N,), got {tuple(embeddings.shape)} and {tuple(labels.shape)}"
            )
        z = self.prepare(embeddings)
        all_z, all_labels, offset = self._gather(z, labels)
        n, m = z.shape[0], all_z.shape[0]

        logits = self.similarities(z, all_z) / self.temperature  # (n, m): own anchors against the global batch
        rows = torch.arange(n, device=z.device)
        self_mask = torch.zeros((n, m), dtype=torch.bool, device=z.device)
        self_mask[rows, rows + offset] = True
        logits = logits.masked_fill(self_mask, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        log_prob = log_prob.masked_fill(self_mask, 0.0)  # avoid 0 * -inf below

        positives = (labels[:, None] == all_labels[None, :]) & ~self_mask
        positive_count = positives.sum(dim=1)
        has_positive = positive_count > 0
        per_anchor = -(log_prob * positives).sum(dim=1) / positive_count.clamp(min=1)
        local_sum = (per_anchor * has_positive).sum()

        # Anchors with a positive in the global batch: rows whose label occurs at least twice. Counted with an
        # (M, M) comparison rather than torch.unique, which would force a host sync on GPU. With no valid anchor
        # local_sum is 0 and the clamp keeps the loss a graph-connected zero (backward and DDP still work).
        valid_anchors = ((all_labels[:, None] == all_labels[None, :]).sum(dim=1) >= 2).sum().clamp(min=1).to(z.dtype)
        scale = self.world_size if is_distributed(self.world_size) else 1
        loss = local_sum * (scale / valid_anchors)
        global_value = all_reduce_sum(local_sum, self.world_size) / valid_anchors
        return {"contrastive_loss": loss, "contrastive_global": global_value}


class MaxSimSupConLoss(SupConLoss):
    """SupCon with late interaction: examples are token matrices (N, L, D) (zero rows = padding) and their
    similarity is the symmetric MaxSim (`models.late_interaction`) instead of a cosine. Rows are padded to
    `max_length` tokens before the gather, so every rank sends the same shape."""

    embedding_ndim = 3

    def __init__(self, temperature: float = 0.05, rank: int = 0, world_size: int = 1, max_length: int = 0, **kw):
        super().__init__(temperature, rank, world_size, **kw)
        self.max_length = max_length

    def prepare(self, embeddings: torch.Tensor) -> torch.Tensor:
        from bookmatch.models.late_interaction import pad_length

        # normalising keeps a padding row zero (F.normalize divides by max(norm, eps))
        return pad_length(F.normalize(_as_float(embeddings), dim=-1), self.max_length)

    def similarities(self, z: torch.Tensor, all_z: torch.Tensor) -> torch.Tensor:
        from bookmatch.models.late_interaction import symmetric_maxsim_matrix

        return symmetric_maxsim_matrix(z, all_z)


def pair_ce_loss(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0, class_weights: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Cross-entropy of the pair classifier: logits (N, 2), labels (N,) in {0, 1}."""
    loss = F.cross_entropy(_as_float(logits), labels.long(), weight=class_weights, label_smoothing=label_smoothing)
    return {"ce_loss": loss}


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0
) -> dict[str, torch.Tensor]:
    """Hinton distillation: T^2 * KL(teacher || student) on temperature-softened distributions, mean per example.

    The T^2 factor keeps the gradient scale independent of T. The teacher is treated as a constant.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ in shape"
        )
    student_log_p = F.log_softmax(_as_float(student_logits) / temperature, dim=-1)
    teacher_log_p = F.log_softmax(_as_float(teacher_logits).detach() / temperature, dim=-1)
    kl = F.kl_div(student_log_p, teacher_log_p, log_target=True, reduction="batchmean")
    return {"distill_loss": kl * temperature**2}


class GradientReversal(torch.autograd.Function):
    """Identity forward; multiplies the gradient by -lambda_ backward (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, lambda_: float) -> torch.Tensor:
        ctx.lambda_ = lambda_
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return -ctx.lambda_ * grad_output, None


def grad_reverse(tensor: torch.Tensor, lambda_: float = 1.0) -> torch.Tensor:
    return GradientReversal.apply(tensor, lambda_)


class TopicAdversary(nn.Module):
    """A small topic classifier fed through gradient reversal.

    The classifier learns to predict the topic from the embedding; the encoder receives the reversed gradient
    and so learns to make the topic unpredictable (style over subject). Topic ids < 0 are ignored (unknown).
    """

    def __init__(self, in_dim: int, num_topics: int, lambda_: float = 0.1, hidden_dim: int = 256, dropout: float = 0.1):
        super().__init__()
        self.lambda_ = lambda_
        self.classifier = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, num_topics)
        )

    def forward(self, embeddings: torch.Tensor, topics: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.classifier(grad_reverse(_as_float(embeddings), self.lambda_))
        topics = topics.long()
        known = topics >= 0
        if not bool(known.any()):
            return {"topic_adv_loss": logits.sum() * 0.0, "topic_adv_accuracy": logits.new_tensor(float("nan"))}
        loss = F.cross_entropy(logits, topics, ignore_index=-1)
        accuracy = (logits.argmax(dim=-1)[known] == topics[known]).float().mean().detach()
        return {"topic_adv_loss": loss, "topic_adv_accuracy": accuracy}


def independence_loss(
    embeddings: torch.Tensor, topic_onehot: torch.Tensor, normalize: bool = True
) -> dict[str, torch.Tensor]:
    """Squared Frobenius norm of the cross-covariance between embeddings and topic indicators.

    This is HSIC with linear kernels (up to the constant 1/(N-1)^2): zero iff no embedding dimension is linearly
    correlated with any topic indicator. `topic_onehot` is (N, K) indicators, or (N,) topic ids (< 0 = unknown,
    an all-zero row).
    """
    x = _as_float(embeddings)
    if normalize:
        x = F.normalize(x, dim=-1)
    if topic_onehot.ndim == 1:
        ids = topic_onehot.long()
        num_topics = int(ids.max().item()) + 1 if ids.numel() and int(ids.max()) >= 0 else 1
        topic_onehot = F.one_hot(ids.clamp(min=0), num_topics).to(x.dtype) * (ids >= 0)[:, None].to(x.dtype)
    y = topic_onehot.to(x.dtype)
    n = x.shape[0]
    if n < 2:
        return {"independence_loss": x.sum() * 0.0}
    cross_cov = (x - x.mean(dim=0)).T @ (y - y.mean(dim=0)) / (n - 1)
    return {"independence_loss": (cross_cov**2).sum()}


class LossLog:
    """Named loss values as floats, fetched from the device on the first read, in one transfer.

    A training loop keeps each step's LossLog and reads only the ones it logs, so the device is not waited on
    at every step (`float(loss)` would block until the step's kernels finish). It reads like a mapping but is
    not a `Mapping`: accelerate's mixed-precision output conversion rebuilds every Mapping a model returns from
    its values, which would force the device read and hand floats back to this constructor."""

    def __init__(self, terms: Mapping[str, torch.Tensor]) -> None:
        self._names = list(terms)
        device = next(iter(terms.values())).device if terms else None
        self._values = (
            torch.stack([v.detach().float().reshape(()).to(device) for v in terms.values()]) if terms else None
        )
        self._floats: dict[str, float] | None = None

    def _read(self) -> dict[str, float]:
        if self._floats is None:
            self._floats = dict(zip(self._names, self._values.tolist())) if self._values is not None else {}
        return self._floats

    def __getitem__(self, name: str) -> float:
        return self._read()[name]

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def keys(self) -> list[str]:
        return list(self._names)

    def items(self) -> list[tuple[str, float]]:
        return list(self._read().items())

    def values(self) -> list[float]:
        return list(self._read().values())

    def get(self, name: str, default: float | None = None) -> float | None:
        return self._read().get(name, default)


def combine_losses(
    terms: Mapping[str, torch.Tensor], weights: Mapping[str, float] | None = None
) -> tuple[torch.Tensor, LossLog]:
    """total = sum(weights.get(k, 1.0) * terms[k]) over keys ending in `_loss`; all terms are logged.

    A term with weight 0 is left out of the total (so a NaN in a disabled term cannot poison it); weights for
    terms that are absent are ignored (a disabled loss simply produces no term). The logged
    LossLog holds every term plus `loss` (the total); its values are fetched with one device sync when read.
    """
    weights = weights or {}
    total = None
    for name, value in terms.items():
        if not name.endswith("_loss"):
            continue
        weight = float(weights.get(name, 1.0))
        if weight == 0.0:
            continue
        total = weight * value if total is None else total + weight * value
    if total is None:
        raise ValueError(f"no loss term to optimise among {sorted(terms)} with weights {dict(weights)}")
    return total, LossLog({**terms, "loss": total})
