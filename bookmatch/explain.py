"""Evidence for an answer: which sentences of each passage carry the bi-encoder's "same book" score.

A sentence's weight is the margin lost when it is left out: margin(a, b) - margin(a without sentence i, b), on
the same (cohort-normalised, when calibrated so) margin the probability is calibrated from. Positive: the
sentence pushes towards "same book"; negative: against. Every variant is scored in one batched call, so a pair
of 14-sentence passages costs one encoder pass over ~30 texts. The names signature's part is shown directly:
the proper names the two passages share, rarest (highest IDF) first, with the sentences that hold them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bookmatch.text.lexical import proper_names
from bookmatch.text.sentences import split_sentences


@dataclass
class SentenceEvidence:
    index: int  # position in its passage
    text: str
    weight: float  # margin lost when the sentence is left out

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "weight": round(self.weight, 6), "text": self.text}


@dataclass
class PairEvidence:
    margin: float
    sentences1: list[SentenceEvidence]  # in passage order
    sentences2: list[SentenceEvidence]
    shared_names: list[dict[str, Any]] = field(default_factory=list)

    @staticmethod
    def ranked(sentences: list[SentenceEvidence]) -> list[SentenceEvidence]:
        return sorted(sentences, key=lambda s: (-s.weight, s.index))

    def to_dict(self, top: int = 3) -> dict[str, Any]:
        return {
            "margin": round(self.margin, 6),
            "top_sentences1": [s.to_dict() for s in self.ranked(self.sentences1)[:top]],
            "top_sentences2": [s.to_dict() for s in self.ranked(self.sentences2)[:top]],
            "sentence_weights1": [round(s.weight, 6) for s in self.sentences1],
            "sentence_weights2": [round(s.weight, 6) for s in self.sentences2],
            "shared_names": self.shared_names,
        }


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of `text` in `text` itself, so a sentence can be cut out of the original."""
    spans, cursor = [], 0
    for sentence in split_sentences(text):
        start = text.find(sentence, cursor)
        if start < 0:  # the splitter normalised it (whitespace): locate its first word instead
            head = sentence.split()[0] if sentence.split() else sentence
            start = text.find(head, cursor)
            if start < 0:
                continue
            end = start + len(head)
        else:
            end = start + len(sentence)
        spans.append((start, end))
        cursor = end
    if spans:  # the text between sentences belongs to the sentence before it
        spans = [(start, spans[i + 1][0] if i + 1 < len(spans) else len(text)) for i, (start, _) in enumerate(spans)]
        spans[0] = (0, spans[0][1])
    return spans


def _without(text: str, spans: list[tuple[int, int]]) -> list[str]:
    return [(text[:start] + text[end:]).strip() or "." for start, end in spans]


def shared_names(model, text1: str, text2: str) -> list[dict[str, Any]]:
    """Proper names in both texts, rarest first (the model's names IDF, else its lexical IDF, else counts)."""
    names1, names2 = proper_names(text1), proper_names(text2)
    common = sorted(set(names1) & set(names2))
    fingerprint = getattr(model, "names", None) or getattr(model, "lexical", None)
    out = []
    for name in common:
        weight = float(fingerprint.idf[fingerprint._bucket(name)]) if fingerprint is not None else 1.0
        out.append({"name": name, "idf": round(weight, 6), "count1": names1.count(name), "count2": names2.count(name)})
    return sorted(out, key=lambda item: (-item["idf"], item["name"]))


def explain_pair(matcher, text1: str, text2: str, batch_size: int = 64) -> PairEvidence:
    """Sentence evidence for one pair from `matcher`'s bi-encoder (a `Matcher`, or a `BiEncoderScorer`)."""
    scorer = getattr(matcher, "bi", matcher)
    spans1, spans2 = sentence_spans(text1), sentence_spans(text2)
    # one sentence has nothing to leave out against: its weight is the whole margin
    variants1 = _without(text1, spans1) if len(spans1) > 1 else []
    variants2 = _without(text2, spans2) if len(spans2) > 1 else []
    left = [text1] + variants1 + [text1] * len(variants2)
    right = [text2] + [text2] * len(variants1) + variants2
    score = np.asarray(scorer.raw_scores(left, right, batch_size=batch_size).score, dtype=np.float64)
    base = float(score[0])
    lost1 = base - score[1 : 1 + len(variants1)] if variants1 else np.full(len(spans1), base)
    lost2 = base - score[1 + len(variants1) :] if variants2 else np.full(len(spans2), base)
    return PairEvidence(
        margin=base,
        sentences1=[
            SentenceEvidence(i, text1[s:e].strip(), float(w)) for i, ((s, e), w) in enumerate(zip(spans1, lost1))
        ],
        sentences2=[
            SentenceEvidence(i, text2[s:e].strip(), float(w)) for i, ((s, e), w) in enumerate(zip(spans2, lost2))
        ],
        shared_names=shared_names(scorer.model, text1, text2),
    )
