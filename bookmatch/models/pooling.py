"""Pooling token vectors into one vector per text."""

from __future__ import annotations

import torch

from bookmatch.models.settings import POOLING_MODES  # noqa: F401  (declared with the settings that choose it)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """(batch, tokens, dim) -> (batch, dim); padding never contributes."""
    if mode == "cls":
        return hidden[:, 0]
    if mode == "last":
        # the last attended position of each row (a decoder's EOS): right or left padding alike
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (attention_mask.long() * positions).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "mean":
        # clamp: an all-padding row (never produced by the tokenizer, but cheap to guard) gives zeros, not NaN
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    if mode == "max":
        return hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
    raise ValueError(f"unknown pooling mode {mode!r}; choose one of {', '.join(POOLING_MODES)}")
