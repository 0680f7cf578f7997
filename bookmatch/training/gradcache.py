"""GradCache (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup").

An in-batch contrastive loss needs every embedding of the batch at once, but only the encoder's activations
are big. GradCache splits the step in three:
  1. embed every mini-batch under `no_grad` (no activations kept), remembering each mini-batch's RNG state;
  2. compute the loss on the concatenated, detached embeddings (as leaves that require grad) and backprop it
     to get d loss / d embedding ("the cache");
  3. re-embed each mini-batch WITH grad, under the RNG state of step 1 so dropout draws the same masks, and
     backprop the cached embedding gradient through it (`embeddings.backward(cached_grad)`).
Parameter gradients are then exactly those of the loss on the full batch (same dropout masks), at the memory
of one mini-batch plus (N, D) embeddings, for about one extra forward pass.

Other loss terms: anything that depends on the encoder only through these embeddings (pair CE from a
classifier head over the two sides of a pair, distillation on those logits, topic adversary, independence)
is passed as `extra_loss_fn(outputs) -> {name_loss: tensor}` and computed in step 2 on the full batch; its
gradient joins the cache, and heads used inside it get their parameter gradients directly in step 2. Terms
that need a separate encoder forward must be backpropagated by the caller on their own (gradients add up).
`weights` are the `combine_losses` weights for all terms (the contrastive term included).

Under DDP: pass `no_sync=ddp_model.no_sync` so only the last mini-batch's backward all-reduces (the earlier
ones accumulate locally); heads called inside `extra_loss_fn` outside the DDP forward need their gradients
all-reduced by the caller (or kept on the DDP-wrapped module and reached through its forward).
Pattern from sentence-transformers' `CachedMultipleNegativesRankingLoss` and its `RandContext`.

With the bi-encoder (both sides stacked: rows [0, B) are text1, [B, 2B) text2):

    def embed(mini):
        pooled, projected = bi_encoder.encode(mini["input_ids"], mini["attention_mask"])
        return projected, pooled                      # SupCon sees the first element

    def pair_terms(outputs):
        _, pooled = outputs
        logits = bi_encoder.classify(pooled[:B], pooled[B:], batch["style_a"], batch["style_b"])
        return {**pair_ce_loss(logits, batch["label"]), **distillation_loss(logits, batch["teacher_logits"])}

    cached = CachedSupCon(SupConLoss(0.05, rank, world_size), mini_batch_size=8)
    total, terms = cached.step_with_terms(embed, {"input_ids": ids, "attention_mask": mask},
                                          torch.cat([work_a, work_b]), pair_terms,
                                          weights={"contrastive_loss": 0.2, "distill_loss": 0.5})
    optimizer.step()
(inputs of the two sides must be padded to one length to stack them; mini-batches are cut along dim 0.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.checkpoint import get_device_states, set_device_states

from bookmatch.training.losses import SupConLoss, combine_losses

Inputs = torch.Tensor | Sequence[torch.Tensor] | Mapping[str, torch.Tensor]
Outputs = torch.Tensor | tuple[torch.Tensor, ...]


class RandContext:
    """Snapshot of the CPU and CUDA RNG states at creation; `with ctx:` replays them without disturbing the caller."""

    def __init__(self, *tensors: torch.Tensor) -> None:
        self.cpu_state = torch.get_rng_state()
        self.gpu_devices, self.gpu_states = get_device_states(*tensors)
        self._fork: contextlib.AbstractContextManager | None = None

    def __enter__(self) -> None:
        self._fork = torch.random.fork_rng(devices=self.gpu_devices, enabled=True)
        self._fork.__enter__()
        torch.set_rng_state(self.cpu_state)
        set_device_states(self.gpu_devices, self.gpu_states)

    def __exit__(self, *exc) -> None:
        assert self._fork is not None
        self._fork.__exit__(*exc)
        self._fork = None


def batch_size_of(inputs: Inputs) -> int:
    if isinstance(inputs, torch.Tensor):
        return inputs.shape[0]
    values = list(inputs.values()) if isinstance(inputs, Mapping) else list(inputs)
    if not values:
        raise ValueError("GradCache got empty inputs")
    sizes = {v.shape[0] for v in values}
    if len(sizes) != 1:
        raise ValueError(f"GradCache inputs disagree on the batch size (dim 0): {sorted(sizes)}")
    return sizes.pop()


def split_inputs(inputs: Inputs, mini_batch_size: int) -> list[Inputs]:
    """Cut a tensor, a list/tuple of tensors, or a dict of tensors into mini-batches along dim 0."""
    total = batch_size_of(inputs)
    slices = [slice(start, start + mini_batch_size) for start in range(0, total, mini_batch_size)]
    if isinstance(inputs, torch.Tensor):
        return [inputs[s] for s in slices]
    if isinstance(inputs, Mapping):
        return [{k: v[s] for k, v in inputs.items()} for s in slices]
    return [type(inputs)(v[s] for v in inputs) for s in slices]


def _as_tuple(outputs: Outputs) -> tuple[torch.Tensor, ...]:
    if isinstance(outputs, torch.Tensor):
        return (outputs,)
    if isinstance(outputs, (tuple, list)) and all(isinstance(o, torch.Tensor) for o in outputs):
        return tuple(outputs)
    raise TypeError(f"embed_fn must return a tensor or a tuple of tensors, got {type(outputs).__name__}")


def _first_tensor(inputs: Inputs) -> torch.Tensor:
    if isinstance(inputs, torch.Tensor):
        return inputs
    return next(iter(inputs.values())) if isinstance(inputs, Mapping) else inputs[0]


@dataclass
class EmbeddingCache:
    """What step 2 leaves for step 3: the gradient of the total loss with respect to each output, per mini-batch."""

    grads: list[tuple[torch.Tensor, ...]]
    rand_states: list[RandContext]
    total: torch.Tensor  # detached
    terms: dict[str, torch.Tensor]  # detached


class CachedSupCon:
    """SupCon (plus optional full-batch extra terms) with GradCache, so the batch can exceed GPU memory.

    `embed_fn(mini_inputs)` returns embeddings (n, D), or a tuple whose FIRST element is what SupCon sees
    (the rest, e.g. pooled vectors, go to `extra_loss_fn` together with it: it receives the full-batch
    tensor, or the full-batch tuple, in the shape `embed_fn` returns). `step` leaves the parameter
    gradients in `.grad` (accumulated, like `loss.backward()`); the caller steps the optimizer.
    """

    def __init__(self, loss: SupConLoss, mini_batch_size: int = 32) -> None:
        if mini_batch_size < 1:
            raise ValueError(f"mini_batch_size must be >= 1, got {mini_batch_size}")
        self.loss = loss
        self.mini_batch_size = mini_batch_size

    def embed_without_grad(
        self, embed_fn: Callable[[Inputs], Outputs], mini_batches: list[Inputs]
    ) -> tuple[tuple[torch.Tensor, ...], list[RandContext], list[int]]:
        """Step 1: full-batch outputs (detached) and the RNG state each mini-batch was embedded under."""
        pieces, rand_states, sizes = [], [], []
        with torch.no_grad():
            for mini in mini_batches:
                rand_states.append(RandContext(_first_tensor(mini)))
                outputs = _as_tuple(embed_fn(mini))
                pieces.append(outputs)
                sizes.append(outputs[0].shape[0])
        full = tuple(torch.cat([p[i] for p in pieces], dim=0) for i in range(len(pieces[0])))
        return full, rand_states, sizes

    def cache_gradients(
        self,
        embed_fn: Callable[[Inputs], Outputs],
        inputs: Inputs,
        labels: torch.Tensor,
        extra_loss_fn: Callable[[tuple[torch.Tensor, ...]], Mapping[str, torch.Tensor]] | None = None,
        weights: Mapping[str, float] | None = None,
    ) -> EmbeddingCache:
        """Steps 1 and 2: embed without grad, then backprop the full-batch loss to the embeddings."""
        mini_batches = split_inputs(inputs, self.mini_batch_size)
        full, rand_states, sizes = self.embed_without_grad(embed_fn, mini_batches)
        leaves = tuple(t.detach().requires_grad_(True) for t in full)
        terms = dict(self.loss(leaves[0], labels))
        if extra_loss_fn is not None:
            extra = dict(extra_loss_fn(leaves if len(leaves) > 1 else leaves[0]))
            overlap = set(extra) & set(terms)
            if overlap:
                raise ValueError(
                    f"extra_loss_fn returned terms that clash with the contrastive ones: {sorted(overlap)}"
                )
            terms.update(extra)
        total, _ = combine_losses(terms, weights)
        total.backward()
        grads = [
            leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)  # an output no term used
            for leaf in leaves
        ]
        per_mini = [tuple(g.split(sizes, dim=0)) for g in grads]
        return EmbeddingCache(
            grads=[tuple(per_mini[i][j] for i in range(len(per_mini))) for j in range(len(sizes))],
            rand_states=rand_states,
            total=total.detach(),
            terms={k: v.detach() for k, v in terms.items()},
        )

    def backward_cached(
        self,
        embed_fn: Callable[[Inputs], Outputs],
        inputs: Inputs,
        cache: EmbeddingCache,
        no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
    ) -> None:
        """Step 3: re-embed each mini-batch with grad under its step-1 RNG state; backprop the cached gradients."""
        mini_batches = split_inputs(inputs, self.mini_batch_size)
        last = len(mini_batches) - 1
        for index, (mini, rand_state, grads) in enumerate(zip(mini_batches, cache.rand_states, cache.grads)):
            sync = no_sync() if (no_sync is not None and index < last) else contextlib.nullcontext()
            with sync, rand_state:
                outputs = _as_tuple(embed_fn(mini))
                torch.autograd.backward(list(outputs), grad_tensors=list(grads))

    def step_with_terms(
        self,
        embed_fn: Callable[[Inputs], Outputs],
        inputs: Inputs,
        labels: torch.Tensor,
        extra_loss_fn: Callable[[Any], Mapping[str, torch.Tensor]] | None = None,
        weights: Mapping[str, float] | None = None,
        no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The whole GradCache step; returns the detached total and every detached term (for logging)."""
        cache = self.cache_gradients(embed_fn, inputs, labels, extra_loss_fn, weights)
        self.backward_cached(embed_fn, inputs, cache, no_sync)
        return cache.total, cache.terms

    def step(
        self,
        embed_fn: Callable[[Inputs], Outputs],
        inputs: Inputs,
        labels: torch.Tensor,
        extra_loss_fn: Callable[[Any], Mapping[str, torch.Tensor]] | None = None,
        weights: Mapping[str, float] | None = None,
        no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
    ) -> torch.Tensor:
        """The whole GradCache step; returns the detached total loss. Parameter gradients are in `.grad`."""
        return self.step_with_terms(embed_fn, inputs, labels, extra_loss_fn, weights, no_sync)[0]
