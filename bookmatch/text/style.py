"""Per-passage style features: cheap surface statistics the bi-encoder sees beside its pooled vector.

Each raw statistic goes through a fixed, documented transform `(f(x) - center) / scale` (f is identity or
log1p) chosen from typical English prose, so a feature is roughly zero-mean and unit-scale without fitting
anything to the data, and clipped to [-CLIP, CLIP] so an odd passage (a table, a poem) cannot dominate.

Feature sets are looked up by name (`get_side_feature_set("style_v1")`) so a model's config records which one
it was trained with and a new set can be added without touching the model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

CLIP = 5.0

_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")
_SENTENCE_END = re.compile(r"[.!?]+(?:[\"'”’)\]]*)(?=\s|$)")
_PUNCTUATION = re.compile(r"[^\w\s]")
_QUOTES = re.compile(r"[\"“”«»]")

# Common English function words: their rates are a classic authorship signal that is mostly topic-free.
FUNCTION_WORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have having
    he her here hers herself him himself his how i if in into is it its itself just me more most my myself no
    nor not now of off on once only or other our ours ourselves out over own same she should so some such than
    that the their theirs them themselves then there these they this those through to too under until up upon
    very was we were what when where which while who whom why will with would you your yours yourself""".split()
)

# name -> (transform, center, scale); the centers/scales are typical values for 19th-20th century prose.
_TRANSFORMS: dict[str, tuple[str, float, float]] = {
    "type_token_ratio": ("identity", 0.65, 0.10),
    "punctuation_ratio": ("identity", 0.030, 0.012),
    "avg_sentence_length": ("log1p", math.log1p(20.0), 0.5),
    "avg_word_length": ("identity", 4.4, 0.4),
    "comma_rate": ("identity", 0.07, 0.035),
    "semicolon_rate": ("identity", 0.006, 0.008),
    "dialogue_quote_rate": ("identity", 0.01, 0.02),
    "exclamation_question_rate": ("identity", 0.005, 0.008),
    "function_word_rate": ("identity", 0.50, 0.06),
    "long_word_rate": ("identity", 0.20, 0.06),
    "capitalized_rate": ("identity", 0.10, 0.05),
}

STYLE_FEATURE_NAMES: tuple[str, ...] = tuple(_TRANSFORMS)


def raw_style_statistics(text: str) -> dict[str, float]:
    """The untransformed statistics (rates are per word unless the name says otherwise)."""
    words = _WORD.findall(text)
    n_words = len(words)
    per_word = 1.0 / n_words if n_words else 0.0
    lowered = [w.lower() for w in words]
    sentences = max(1, len(_SENTENCE_END.findall(text))) if n_words else 0
    non_space = sum(1 for ch in text if not ch.isspace())
    return {
        "type_token_ratio": len(set(lowered)) * per_word,
        "punctuation_ratio": len(_PUNCTUATION.findall(text)) / non_space if non_space else 0.0,
        "avg_sentence_length": n_words / sentences if sentences else 0.0,
        "avg_word_length": sum(len(w) for w in words) * per_word,
        "comma_rate": text.count(",") * per_word,
        "semicolon_rate": (text.count(";") + text.count(":")) * per_word,
        "dialogue_quote_rate": len(_QUOTES.findall(text)) * per_word,
        "exclamation_question_rate": (text.count("!") + text.count("?")) * per_word,
        "function_word_rate": sum(1 for w in lowered if w in FUNCTION_WORDS) * per_word,
        "long_word_rate": sum(1 for w in words if len(w) >= 7) * per_word,
        "capitalized_rate": sum(1 for w in words if w[0].isupper()) * per_word,
    }


def normalize_statistics(stats: dict[str, float]) -> np.ndarray:
    values = []
    for name in STYLE_FEATURE_NAMES:
        transform, center, scale = _TRANSFORMS[name]
        x = stats[name]
        if transform == "log1p":
            x = math.log1p(x)
        values.append(min(CLIP, max(-CLIP, (x - center) / scale)))
    return np.asarray(values, dtype=np.float32)


def style_features(text: str) -> np.ndarray:
    """float32 vector aligned with STYLE_FEATURE_NAMES, normalized to roughly zero mean and unit scale."""
    return normalize_statistics(raw_style_statistics(text))


@dataclass(frozen=True)
class SideFeatureSet:
    """A named per-text feature function; the bi-encoder's classifier width derives from `names`."""

    name: str
    names: tuple[str, ...]
    function: Callable[[str], np.ndarray]

    @property
    def dim(self) -> int:
        return len(self.names)

    def batch(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self.function(t) for t in texts]).astype(np.float32, copy=False)


def _no_features(text: str) -> np.ndarray:
    return np.zeros((0,), dtype=np.float32)


SIDE_FEATURE_SETS: dict[str, SideFeatureSet] = {
    "style_v1": SideFeatureSet("style_v1", STYLE_FEATURE_NAMES, style_features),
    "none": SideFeatureSet("none", (), _no_features),
}


def get_side_feature_set(name: str) -> SideFeatureSet:
    try:
        return SIDE_FEATURE_SETS[name]
    except KeyError:
        raise ValueError(f"unknown side feature set {name!r}; known: {', '.join(SIDE_FEATURE_SETS)}") from None
