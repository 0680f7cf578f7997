"""Late interaction (ColBERT's MaxSim, Khattab & Zaharia 2020) over per-token vectors, for `scoring: maxsim`.

A text is kept as its tokens' L2-normalised vectors (N, L, d), padded with all-zero rows: a padding row is the
zero vector, so the mask travels with the tensor (a real token's vector has norm 1). MaxSim of a query text q
against a document text t is the mean over q's tokens of their best cosine with any of t's tokens; ColBERT sums
instead of averaging, which ranks documents for one query the same but makes a pair's score grow with its
length. "Same book" is symmetric, so a pair's score is the mean of both directions (`symmetric_maxsim_*`).

PyLate (the ColBERT library on sentence-transformers) pins sentence-transformers 5.3 and transformers <= 5.3,
older than ours, so the scoring is written here over the shared encoder's token states.
"""

from __future__ import annotations

import torch
from torch import nn

# elements of one (rows, columns, La, Lb) similarity block: 2**25 floats = 128 MiB
BLOCK_ELEMENTS = 1 << 25


def token_mask(tokens: torch.Tensor) -> torch.Tensor:
    """(N, L) bool: the rows of `tokens` (N, L, d) that are real tokens (non-zero), not padding."""
    return tokens.detach().abs().amax(dim=-1) > 0


def pad_tokens(rows: list[torch.Tensor], dim: int, length: int | None = None) -> torch.Tensor:
    """Stack per-text token matrices (Li, d) into (N, L, d) with zero rows after each text's own (L = the longest,
    or `length`)."""
    longest = max([r.shape[0] for r in rows], default=0)
    length = longest if length is None else max(length, longest)
    out = torch.zeros(len(rows), length, dim, dtype=rows[0].dtype if rows else torch.float32)
    for i, row in enumerate(rows):
        out[i, : row.shape[0]] = row
    return out


def pad_length(tokens: torch.Tensor, length: int) -> torch.Tensor:
    """`tokens` (N, L, d) padded with zero rows to (N, max(L, length), d)."""
    if tokens.shape[1] >= length:
        return tokens
    return nn.functional.pad(tokens, (0, 0, 0, length - tokens.shape[1]))


def _directions(sims: torch.Tensor, mask_a: torch.Tensor, mask_b: torch.Tensor) -> torch.Tensor:
    """`sims` (..., La, Lb) token cosines with broadcastable masks (..., La, 1) and (..., 1, Lb) -> the mean of
    MaxSim(a -> b) and MaxSim(b -> a), shape (...)."""
    low = torch.finfo(sims.dtype).min
    sims = sims.masked_fill(~(mask_a & mask_b), low)
    a_to_b = sims.amax(dim=-1).masked_fill(~mask_a[..., 0], 0.0).sum(dim=-1)
    b_to_a = sims.amax(dim=-2).masked_fill(~mask_b[..., 0, :], 0.0).sum(dim=-1)
    count_a = mask_a[..., 0].sum(dim=-1).clamp(min=1)
    count_b = mask_b[..., 0, :].sum(dim=-1).clamp(min=1)
    return 0.5 * (a_to_b / count_a + b_to_a / count_b)


def symmetric_maxsim_pairs(tokens_a: torch.Tensor, tokens_b: torch.Tensor) -> torch.Tensor:
    """(N,) symmetric MaxSim of aligned rows: tokens_a (N, La, d) against tokens_b (N, Lb, d), in float32."""
    a, b = tokens_a.float(), tokens_b.float()
    mask_a, mask_b = token_mask(a), token_mask(b)
    rows = max(1, BLOCK_ELEMENTS // max(a.shape[1] * b.shape[1], 1))
    out = []
    for start in range(0, a.shape[0], rows):
        part = slice(start, start + rows)
        sims = torch.einsum("nkd,nld->nkl", a[part], b[part])
        out.append(_directions(sims, mask_a[part, :, None], mask_b[part, None, :]))
    return torch.cat(out) if out else a.new_zeros(0)


def symmetric_maxsim_matrix(tokens_a: torch.Tensor, tokens_b: torch.Tensor) -> torch.Tensor:
    """(N, M) symmetric MaxSim of every row of tokens_a (N, La, d) against every row of tokens_b (M, Lb, d).

    Blocks of rows keep the (rows, M, La, Lb) token similarities under BLOCK_ELEMENTS; differentiable.
    """
    a, b = tokens_a.float(), tokens_b.float()
    mask_a, mask_b = token_mask(a), token_mask(b)
    n, m, la, lb = a.shape[0], b.shape[0], a.shape[1], b.shape[1]
    rows = max(1, BLOCK_ELEMENTS // max(m * la * lb, 1))
    flat_b = b.reshape(m * lb, -1)
    out = []
    for start in range(0, n, rows):
        part = slice(start, start + rows)
        sims = (a[part].reshape(-1, a.shape[-1]) @ flat_b.T).reshape(-1, la, m, lb).transpose(1, 2)
        out.append(_directions(sims, mask_a[part, None, :, None], mask_b[None, :, None, :]))
    return torch.cat(out) if out else a.new_zeros(0, m)
