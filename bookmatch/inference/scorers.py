"""Raw scores of aligned pairs: the bi-encoder (cached per-text embeddings, cohort normalisation) and the
cross-encoder; truncation warnings."""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bookmatch.errors import InputError
from bookmatch.inference.calibration import logit_margin
from bookmatch.inference.loading import CROSS_ENCODER, detect_model_kind, load_bi_encoder, load_cross_encoder

TRUNCATED = "are read"  # marks the truncation warning (counted in batch reports)


def truncation_warning(max_tokens: int) -> str:
    return f"a text is longer than {max_tokens} tokens: only its first {max_tokens} {TRUNCATED}"


def _pair_truncation_warning(max_tokens: int) -> str:
    return f"the two texts together are longer than the cross-encoder's {max_tokens} tokens: only {max_tokens} of their tokens {TRUNCATED}"


def longer_than(
    max_tokens: int, special_tokens: int, words: Sequence[int], chars: Sequence[int], count_tokens
) -> list[bool]:
    """Which items (texts or pairs, given their word and character counts) exceed `max_tokens` once
    `special_tokens` are added. Every word is at least one token and a token is rarely shorter than one
    character, so only items between those two bounds go to the (costly) tokenizer:
    `count_tokens(indices)` returns their token counts, special tokens included."""
    over = [n_words + special_tokens > max_tokens for n_words in words]
    unsure = [i for i, n_chars in enumerate(chars) if not over[i] and n_chars > max_tokens - special_tokens]
    if unsure:
        for i, n_tokens in zip(unsure, count_tokens(unsure)):
            over[i] = n_tokens > max_tokens
    return over


def _text_key(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", errors="surrogatepass"), digest_size=16).hexdigest()


def _split_cached(cache: OrderedDict, keys: Sequence[str]) -> tuple[dict[str, Any], dict[str, int]]:
    """The values of `keys` found in the LRU `cache` (each marked as recently used), and the first position of
    each key that is not there."""
    found: dict[str, Any] = {}
    missing: dict[str, int] = {}
    for position, key in enumerate(keys):
        if key in found or key in missing:
            continue
        if key in cache:
            cache.move_to_end(key)
            found[key] = cache[key]
        else:
            missing[key] = position
    return found, missing


@dataclass
class RawScores:
    """Uncalibrated outputs for aligned pairs: logit margin l1 - l0, (bi-encoder) cosine of projections, and
    (bi-encoder with a score cohort) the cohort-normalised margin."""

    margin: np.ndarray
    cosine: np.ndarray | None = None
    normalized: np.ndarray | None = None

    @property
    def score(self) -> np.ndarray:
        """What a calibration applies to: the normalised margin where there is one (a calibration with a
        cohort was fitted on it, and the scorer then has the cohort), else the margin."""
        return self.margin if self.normalized is None else self.normalized


def resolve_inference_precision(precision: str, model) -> str:
    """The autocast a scorer encodes under: "auto" is bf16 where the model's device computes it natively.

    The encoder and the projection run under autocast; windows' pooled vectors are summed in float64 and the
    pair classifier runs in float32, so bf16 moved a trained model's margins by at most 0.009 (AUC unchanged,
    BENCHMARKS.md) while encoding ran 2x faster on a CPU with AVX512-BF16.
    """
    from bookmatch.precision import resolve_mixed_precision

    try:
        return resolve_mixed_precision(precision, use_cuda=model.device.type == "cuda")
    except ValueError as err:
        raise InputError(f"--precision: {err}") from err


class BiEncoderScorer:
    """Bi-encoder logits with an LRU cache of per-text embeddings, so a text repeated across pairs (or
    across calls) is encoded once. `precision`: no | bf16 | fp16 | auto (autocast of the encoder)."""

    def __init__(self, model, cache_size: int = 4096, precision: str = "no", cohort=None) -> None:
        self.model = model
        self.precision = resolve_inference_precision(precision, model)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[Any, Any, Any]] = OrderedDict()
        self._affinities: OrderedDict[str, float] = OrderedDict()
        self.encoded_texts = 0  # how many texts went through the encoder (cache misses), for tests and benchmarks
        self.cohort = cohort

    @property
    def cohort(self):
        """The ScoreCohort that `raw_scores` normalises margins with (None: no normalisation)."""
        return self._cohort

    @cohort.setter
    def cohort(self, cohort) -> None:
        if cohort is not None:
            cohort.check_fits(self.model)
        self._cohort = cohort
        self._affinities.clear()

    @property
    def max_text_tokens(self) -> int:
        """Tokens of one text the model reads (all its windows)."""
        return self.model.text_token_limit()

    @property
    def tokenizer(self):
        return self.model.tokenizer

    def embed(self, texts: Sequence[str], batch_size: int = 64, show_progress: bool = False):
        """TextEmbeddings for `texts` in order; only texts not in the cache are encoded."""
        import torch

        from bookmatch.models.bi_encoder import TextEmbeddings
        from bookmatch.precision import autocast
        from bookmatch.progress import progress

        keys = [_text_key(t) for t in texts]
        rows, first_row = _split_cached(self._cache, keys)
        missing = {key: texts[row] for key, row in first_row.items()}
        if missing:
            missing_keys = list(missing)
            chunk = max(batch_size * 16, 1)
            starts = range(0, len(missing_keys), chunk)
            for start in progress(
                starts, desc="encoding", total=len(starts), unit="block", disable=None if show_progress else True
            ):
                block = missing_keys[start : start + chunk]
                with autocast(self.precision, self.model.device.type):
                    emb = self.model.encode_texts([missing[k] for k in block], batch_size=batch_size)
                self.encoded_texts += len(block)
                for i, key in enumerate(block):
                    # clone: a cached row must not keep its whole block's tensors alive after eviction
                    row = (emb.pooled[i].clone(), emb.projected[i].clone(), emb.style[i].clone(), _own_tokens(emb, i))
                    rows[key] = row
                    self._remember(key, row)
        if not keys:
            dim_h, dim_p = self.model.config.hidden_size, self.model.config.projection_dim
            tokens = torch.zeros(0, 0, dim_p) if self.model.late_interaction else None
            return TextEmbeddings(
                torch.zeros(0, dim_h), torch.zeros(0, dim_p), torch.zeros(0, self.model.style_width), tokens
            )
        return _stack_rows([rows[k] for k in keys])

    def _remember(self, key: str, row: Any, cache: OrderedDict | None = None) -> None:
        cache = self._cache if cache is None else cache
        if self.cache_size <= 0:
            return
        cache[key] = row
        cache.move_to_end(key)
        while len(cache) > self.cache_size:
            cache.popitem(last=False)

    def affinities(self, texts: Sequence[str], embeddings) -> np.ndarray:
        """Each text's mean margin against the cohort (cached like the embeddings); `embeddings` are the texts'."""

        keys = [_text_key(t) for t in texts]
        values, missing = _split_cached(self._affinities, keys)
        if missing:
            rows = np.asarray(list(missing.values()))
            fresh = self.cohort.affinities(self.model, embeddings.take(rows))
            for key, value in zip(missing, fresh):
                values[key] = float(value)
                self._remember(key, float(value), self._affinities)
        return np.asarray([values[key] for key in keys], dtype=np.float64)

    def raw_scores(
        self, text1: Sequence[str], text2: Sequence[str], batch_size: int = 64, show_progress: bool = False
    ) -> RawScores:
        import torch

        # One embed call over both sides: a text on both sides, or in many pairs, is encoded once.
        emb = self.embed(list(text1) + list(text2), batch_size=batch_size, show_progress=show_progress)
        n = len(text1)
        side_a, side_b = emb.take(slice(None, n)), emb.take(slice(n, None))
        # both orders: the classifier reads [u, v, ...] in order, but "same book" is symmetric, and so is the
        # score: score(a, b) == score(b, a)
        logits = 0.5 * (self.model.pair_logits(side_a, side_b) + self.model.pair_logits(side_b, side_a))
        cosine = torch.nn.functional.cosine_similarity(side_a.projected, side_b.projected, dim=-1)
        margin = logit_margin(logits)
        normalized = None
        if self.cohort is not None:
            from bookmatch.cohort import normalized_margin

            affinity = self.affinities(list(text1) + list(text2), emb)
            normalized = normalized_margin(margin, affinity[:n], affinity[n:])
        return RawScores(margin=margin, cosine=cosine.double().numpy(), normalized=normalized)


def _own_tokens(emb, i: int):
    """Text i's token vectors without its padding rows (scoring: maxsim; None otherwise), a copy."""
    if emb.tokens is None:
        return None
    from bookmatch.models.late_interaction import token_mask

    return emb.tokens[i, : int(token_mask(emb.tokens[i : i + 1]).sum())].clone()


def _stack_rows(rows: list[tuple]):
    """TextEmbeddings from cached per-text rows (pooled, projected, style, tokens or None)."""
    import torch

    from bookmatch.models.bi_encoder import TextEmbeddings
    from bookmatch.models.late_interaction import pad_tokens

    stacked = [torch.stack([row[j] for row in rows]) for j in range(3)]
    tokens = None
    if rows[0][3] is not None:
        tokens = pad_tokens([row[3] for row in rows], rows[0][1].shape[0])
    return TextEmbeddings(*stacked, tokens)


class CrossEncoderScorer:
    def __init__(self, model, precision: str = "no") -> None:
        self.model = model
        self.precision = resolve_inference_precision(precision, model)

    @property
    def max_text_tokens(self) -> int:
        """Tokens of one pair (both texts, [CLS] and two [SEP]) the model reads: longer pairs are truncated."""
        config = getattr(self.model, "config", None)
        return int(getattr(config, "max_seq_length", 512) or 512)

    @property
    def tokenizer(self):
        return self.model.tokenizer

    def pair_token_lengths(self, text1: Sequence[str], text2: Sequence[str]) -> list[int]:
        """Untruncated token count of each pair as the model joins them (special tokens included)."""
        if not len(text1):
            return []
        encoded = self.tokenizer(list(text1), list(text2), add_special_tokens=True, truncation=False, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def pair_warnings(self, text1: Sequence[str], text2: Sequence[str]) -> list[list[str]]:
        """Per pair: a warning when the model will truncate it (it truncates the pair as a whole)."""
        max_tokens = self.max_text_tokens
        over = longer_than(
            max_tokens,
            3,  # [CLS] and two [SEP]
            [len(a.split()) + len(b.split()) for a, b in zip(text1, text2)],
            [len(a) + len(b) for a, b in zip(text1, text2)],
            lambda unsure: self.pair_token_lengths([text1[i] for i in unsure], [text2[i] for i in unsure]),
        )
        return [[_pair_truncation_warning(max_tokens)] if is_over else [] for is_over in over]

    def raw_scores(
        self, text1: Sequence[str], text2: Sequence[str], batch_size: int = 64, show_progress: bool = False
    ) -> RawScores:
        pairs = list(zip(text1, text2))
        if not pairs:
            return RawScores(margin=np.zeros(0))
        from bookmatch.precision import autocast

        with autocast(self.precision, self.model.device.type):
            logits = self.model.predict_logits(pairs, batch_size=batch_size)
        return RawScores(margin=logit_margin(logits))


def load_scorer(
    model_dir: str | os.PathLike, kind: str | None = None, device: str | None = None, precision: str = "no"
):
    kind = kind or detect_model_kind(model_dir)
    if kind == CROSS_ENCODER:
        return CrossEncoderScorer(load_cross_encoder(model_dir, device), precision)
    return BiEncoderScorer(load_bi_encoder(model_dir, device), precision=precision)
