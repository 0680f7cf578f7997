"""Scoring pairs of passages: the `Matcher` API behind `bookmatch infer` (single, batch) and `evaluate`.

P(same book) = sigmoid((m - offset) / T) with the temperature T and offset from `calibration.json` beside the
model (1 and 0 when absent), where m is the logit margin l1 - l0, less its texts' mean margins against the
score cohort when the calibration was fitted with one (`bookmatch.cohort`); the decision threshold comes
from the caller, else that file, else 0.5.

Two-stage: the bi-encoder scores every pair; a pair under the prefilter threshold is answered "different
book" at once (stage "bi-encoder"); the rest go to the cross-encoder, whose calibrated probability and
threshold decide (stage "cross-encoder").

Long texts: the bi-encoder reads a text longer than its `max_seq_length` tokens whole, as consecutive windows
whose pooled vectors it averages (up to `max_windows` windows; "truncate" models read the first window only);
the cross-encoder truncates each pair to its `max_seq_length`. A text cut short is scored with a warning.

Modules: `pairs_file` (reading JSON-lines pairs), `loading` (model kind, device, loading), `scorers` (raw scores of
each model), `matcher` (the `Matcher` API and the two-stage rule).
"""

from bookmatch.inference.loading import (
    BI_ENCODER,
    CROSS_ENCODER,
    default_device,
    detect_model_kind,
    load_bi_encoder,
    load_cross_encoder,
    resolve_device,
)
from bookmatch.inference.matcher import MIN_RELIABLE_WORDS, BatchReport, Matcher, MatchResult, two_stage_decision
from bookmatch.inference.pairs_file import is_valid_unicode, read_pairs_jsonl
from bookmatch.inference.scorers import (
    TRUNCATED,
    BiEncoderScorer,
    CrossEncoderScorer,
    RawScores,
    load_scorer,
    resolve_inference_precision,
)

__all__ = [
    "BI_ENCODER",
    "CROSS_ENCODER",
    "MIN_RELIABLE_WORDS",
    "TRUNCATED",
    "BatchReport",
    "BiEncoderScorer",
    "CrossEncoderScorer",
    "MatchResult",
    "Matcher",
    "RawScores",
    "default_device",
    "detect_model_kind",
    "is_valid_unicode",
    "load_bi_encoder",
    "load_cross_encoder",
    "load_scorer",
    "read_pairs_jsonl",
    "resolve_device",
    "resolve_inference_precision",
    "two_stage_decision",
]
