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


# Padding without masks: each real token gets one more coordinate sqrt(2) (padding rows stay zero), so two real
# tokens' product is their cosine + 2, in [1, 3], and any product with padding is 0. A row's maximum is then over
# real tokens only (it is >= 1), a padding row's maximum is 0, and the sum of a text's maxima less 2 per real
# token is the sum of its real tokens' MaxSim: no masked copy of the (rows, La, M, Lb) block is needed.
OFFSET = 2.0


def _augmented(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm token vectors in float32 with the offset coordinate, and each text's real-token count."""
    mask = token_mask(tokens)
    unit = nn.functional.normalize(tokens.float(), dim=-1)
    extra = mask[..., None].float() * OFFSET**0.5
    return torch.cat([unit, extra], dim=-1), mask.sum(dim=-1).clamp(min=1).float()


def symmetric_maxsim_pairs(tokens_a: torch.Tensor, tokens_b: torch.Tensor) -> torch.Tensor:
    """(N,) symmetric MaxSim of aligned rows: tokens_a (N, La, d) against tokens_b (N, Lb, d), in float32.

    Vectors are compared as cosines (each real token normalised here); zero rows are padding."""
    a, count_a = _augmented(tokens_a)
    b, count_b = _augmented(tokens_b)
    rows = max(1, BLOCK_ELEMENTS // max(a.shape[1] * b.shape[1], 1))
    out = []
    for start in range(0, a.shape[0], rows):
        part = slice(start, start + rows)
        sims = torch.bmm(a[part], b[part].transpose(1, 2))  # (r, La, Lb)
        a_to_b = sims.amax(dim=2).sum(dim=1) / count_a[part]
        b_to_a = sims.amax(dim=1).sum(dim=1) / count_b[part]
        out.append(0.5 * (a_to_b + b_to_a) - OFFSET)
    return torch.cat(out) if out else tokens_a.new_zeros(0, dtype=torch.float32)


def symmetric_maxsim_matrix(tokens_a: torch.Tensor, tokens_b: torch.Tensor) -> torch.Tensor:
    """(N, M) symmetric MaxSim of every row of tokens_a (N, La, d) against every row of tokens_b (M, Lb, d).

    One matrix product per block of rows, sized to keep the (rows, La, M, Lb) token similarities under
    BLOCK_ELEMENTS; differentiable.
    """
    a, count_a = _augmented(tokens_a)
    b, count_b = _augmented(tokens_b)
    n, m, la, lb = a.shape[0], b.shape[0], a.shape[1], b.shape[1]
    rows = max(1, BLOCK_ELEMENTS // max(m * la * lb, 1))
    flat_b = b.reshape(m * lb, -1)
    out = []
    for start in range(0, n, rows):
        block = a[start : start + rows]
        sims = (block.reshape(-1, block.shape[-1]) @ flat_b.T).reshape(block.shape[0], la, m, lb)
        a_to_b = sims.amax(dim=3).sum(dim=1) / count_a[start : start + rows, None]
        b_to_a = sims.amax(dim=1).sum(dim=2) / count_b[None, :]
        out.append(0.5 * (a_to_b + b_to_a) - OFFSET)
    return torch.cat(out) if out else tokens_a.new_zeros(0, m, dtype=torch.float32)
