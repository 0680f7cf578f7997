"""Gathering a batch across processes for in-batch contrastive losses.

Pattern from open_clip (`gather_features`) and sentence-transformers (`util/distributed.py`): every helper is a
no-op when there is one process or `torch.distributed` is not initialised, so the losses need no special case.

Gradients flow through `gather_with_grad`: `torch.distributed.nn.functional.all_gather` sums, in backward, the
gradient that every rank computed for a gathered copy back into the rank that owns the rows (reduce-scatter on
NCCL, scatter-based all-to-all on gloo). Ranks may hold different numbers of rows (the last, short batch):
the sizes are exchanged first and shorter tensors are padded, then trimmed.
"""

from __future__ import annotations

import torch


def is_distributed(world_size: int) -> bool:
    """True when `world_size` > 1 and a process group exists (otherwise every helper here is a no-op)."""
    import torch.distributed as dist

    return world_size > 1 and dist.is_available() and dist.is_initialized()


def gather_sizes(tensor: torch.Tensor, world_size: int) -> list[int]:
    """Number of rows (dim 0) each rank holds, in rank order; `[len(tensor)]` when not distributed."""
    if not is_distributed(world_size):
        return [tensor.shape[0]]
    import torch.distributed as dist

    size = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world_size)]
    dist.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


def _pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    if tensor.shape[0] == rows:
        return tensor
    pad = tensor.new_zeros((rows - tensor.shape[0], *tensor.shape[1:]))
    return torch.cat([tensor, pad], dim=0)


def gather_with_grad(tensor: torch.Tensor, world_size: int, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate `tensor` from all ranks along dim 0, in rank order, keeping gradients.

    `sizes` (from `gather_sizes`) may be passed to avoid exchanging the row counts again.
    """
    if not is_distributed(world_size):
        return tensor
    import torch.distributed.nn.functional as dist_fn

    sizes = sizes if sizes is not None else gather_sizes(tensor, world_size)
    longest = max(sizes)
    parts = dist_fn.all_gather(_pad_rows(tensor, longest))
    return torch.cat([part[:size] for part, size in zip(parts, sizes)], dim=0)


def gather_no_grad(tensor: torch.Tensor, world_size: int, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate `tensor` from all ranks along dim 0 without autograd (labels, masks, logging values)."""
    if not is_distributed(world_size):
        return tensor
    import torch.distributed as dist

    sizes = sizes if sizes is not None else gather_sizes(tensor, world_size)
    longest = max(sizes)
    padded = _pad_rows(tensor.detach().contiguous(), longest)
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)], dim=0)


def all_reduce_sum(value: torch.Tensor, world_size: int) -> torch.Tensor:
    """Sum of a detached tensor over ranks (for logging global values); identity when not distributed."""
    if not is_distributed(world_size):
        return value.detach()
    import torch.distributed as dist

    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total
