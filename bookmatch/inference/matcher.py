"""The `Matcher` API behind `bookmatch infer` (single, batch) and its two-stage decision rule."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bookmatch.config import check_batch_size
from bookmatch.errors import InputError, ModelLoadError
from bookmatch.inference.calibration import (
    Calibration,
    StyleCalibration,
    load_calibration,
    load_score_cohort,
    load_style_calibration,
)
from bookmatch.inference.loading import (
    BI_ENCODER,
    CROSS_ENCODER,
    detect_model_kind,
    load_bi_encoder,
    load_cross_encoder,
)
from bookmatch.inference.pairs_file import check_pairs_input, is_valid_unicode, read_pairs_jsonl
from bookmatch.inference.scorers import TRUNCATED, BiEncoderScorer, CrossEncoderScorer, longer_than, truncation_warning
from bookmatch.leftovers import sweep_dead
from bookmatch.storage import os_reason

# Fewer words than this and the style/topic signal is too thin to trust: scored, but with a warning.
MIN_RELIABLE_WORDS = 12


def two_stage_decision(
    bi_probability: np.ndarray, cross_probability: np.ndarray, prefilter_threshold: float, cross_threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probability, same_book, decided_by_cross) for aligned pairs.

    Pairs under the prefilter keep the bi-encoder probability and a negative answer; the others take the
    cross-encoder probability (`cross_probability` is only read there, so it may hold NaN elsewhere).
    """
    bi_probability = np.asarray(bi_probability, dtype=np.float64)
    by_cross = bi_probability >= prefilter_threshold
    probability = np.where(by_cross, cross_probability, bi_probability)
    same_book = by_cross & (probability >= cross_threshold)
    return probability, same_book, by_cross


# ---------------------------------------------------------------------------------------------- matcher


@dataclass(frozen=True)
class MatchResult:
    same_book: bool
    probability: float  # calibrated P(same book) from the model that decided
    confidence: float  # probability of the answer given: probability if same_book else 1 - probability
    style_similarity: float | None  # isotonic-calibrated (style_calibration.json), else raw cosine in [-1, 1]
    stage: str  # "bi-encoder" or "cross-encoder": which model decided
    warnings: tuple[str, ...] = field(default=())

    def to_dict(self, style: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "same_book": self.same_book,
            "confidence": round(self.confidence, 6),
            "probability": round(self.probability, 6),
        }
        if style:
            out["style_similarity"] = None if self.style_similarity is None else round(self.style_similarity, 6)
        out["stage"] = self.stage
        return out


@dataclass
class BatchReport:
    scored: int
    skipped: int
    short_texts: int
    truncated_texts: int
    seconds: float
    bad_lines: list[str]


class Matcher:
    """Scores pairs with a bi-encoder (contrastive mode) or bi-encoder + cross-encoder (two-stage mode)."""

    def __init__(
        self,
        bi_scorer: BiEncoderScorer,
        bi_calibration: Calibration,
        style_calibration: StyleCalibration | None = None,
        cross_scorer: CrossEncoderScorer | None = None,
        cross_calibration: Calibration | None = None,
        threshold: float | None = None,
        prefilter_threshold: float | None = None,
        cross_threshold: float | None = None,
    ) -> None:
        if bi_calibration.cohort_sha256 is not None and bi_scorer.cohort is None:
            raise ValueError(
                "this calibration was fitted on cohort-normalised margins: give the bi-encoder scorer its score cohort (load_score_cohort)"
            )
        self.bi = bi_scorer
        self.bi_calibration = bi_calibration
        self.style_calibration = style_calibration
        self.cross = cross_scorer
        self.cross_calibration = cross_calibration or Calibration()
        self.threshold = float(threshold if threshold is not None else bi_calibration.threshold)
        self.prefilter_threshold = float(prefilter_threshold if prefilter_threshold is not None else self.threshold)
        self.cross_threshold = float(
            cross_threshold if cross_threshold is not None else self.cross_calibration.threshold
        )
        for name, value in (
            ("threshold", self.threshold),
            ("prefilter threshold", self.prefilter_threshold),
            ("cross threshold", self.cross_threshold),
        ):
            if not 0.0 <= value <= 1.0:
                raise InputError(f"{name} must lie in [0, 1], got {value}")

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | os.PathLike,
        cross_model: str | os.PathLike | None = None,
        device: str | None = None,
        threshold: float | None = None,
        prefilter_threshold: float | None = None,
        cross_threshold: float | None = None,
        cache_size: int = 4096,
        precision: str = "auto",
    ) -> Matcher:
        """Load the bi-encoder in `model_dir` (and a cross-encoder for two-stage) with the calibration files
        in their parent folders, when present. `precision`: the encoders' autocast (see BiEncoderScorer)."""
        if detect_model_kind(model_dir) != BI_ENCODER:
            raise ModelLoadError(
                f"{model_dir} holds a cross-encoder; pass the bi-encoder as the model (and the cross-encoder as the cross model)"
            )
        bi_calibration = load_calibration(model_dir, BI_ENCODER)
        bi = BiEncoderScorer(
            load_bi_encoder(model_dir, device),
            cache_size=cache_size,
            precision=precision,
            cohort=load_score_cohort(model_dir, bi_calibration),
        )
        cross = cross_calibration = None
        if cross_model is not None:
            if detect_model_kind(cross_model) != CROSS_ENCODER:
                raise ModelLoadError(
                    f"{cross_model} is not a cross-encoder folder; pass the `final/` folder of `bookmatch train cross`"
                )
            cross = CrossEncoderScorer(load_cross_encoder(cross_model, device), precision)
            cross_calibration = load_calibration(cross_model, CROSS_ENCODER)
        return cls(
            bi,
            bi_calibration or Calibration(),
            load_style_calibration(model_dir),
            cross,
            cross_calibration,
            threshold=threshold,
            prefilter_threshold=prefilter_threshold,
            cross_threshold=cross_threshold,
        )

    @property
    def mode(self) -> str:
        return "two-stage" if self.cross is not None else "contrastive"

    # checks ---------------------------------------------------------------------------------------------
    def text_warnings(self, texts: Sequence[str]) -> list[list[str]]:
        """Per text: warnings about very short texts and texts the bi-encoder will truncate.

        The cross-encoder truncates pairs, not texts: `score_many` checks the pairs it sends there."""
        max_tokens = self.bi.max_text_tokens
        words = [len(text.split()) for text in texts]
        out = [
            [f"a text has only {n} word(s): scores of very short texts are unreliable"]
            if n < MIN_RELIABLE_WORDS
            else []
            for n in words
        ]
        over = longer_than(
            max_tokens,
            2,
            words,
            [len(text) for text in texts],  # [CLS] and [SEP]
            lambda unsure: self._token_lengths([texts[i] for i in unsure]),
        )
        for warnings, is_over in zip(out, over):
            if is_over:
                warnings.append(truncation_warning(max_tokens))
        return out

    def _token_lengths(self, texts: list[str]) -> list[int]:
        encoded = self.bi.tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]

    # scoring ---------------------------------------------------------------------------------------------
    def score(self, text1: str, text2: str) -> MatchResult:
        return self.score_many([(text1, text2)])[0]

    def score_many(
        self, pairs: Iterable[tuple[str, str]], batch_size: int = 64, check: bool = True
    ) -> list[MatchResult]:
        check_batch_size(batch_size, "batch size", InputError)
        pairs = list(pairs)
        if not pairs:
            return []
        text1 = [p[0] for p in pairs]
        text2 = [p[1] for p in pairs]
        for number, (a, b) in enumerate(pairs, start=1):
            for name, text in (("text1", a), ("text2", b)):
                if not isinstance(text, str) or not text.strip():
                    raise InputError(f"pair {number}: {name} is empty or not a string: give two non-empty passages")
                if not is_valid_unicode(text):
                    raise InputError(
                        f"pair {number}: {name} holds a lone surrogate, which is not valid Unicode text: pass UTF-8 text"
                    )
        warnings: list[list[str]] = [[] for _ in pairs]
        if check:
            per_text = self.text_warnings(text1 + text2)
            n = len(pairs)
            warnings = [sorted(set(per_text[i] + per_text[n + i])) for i in range(n)]
        raw = self.bi.raw_scores(text1, text2, batch_size=batch_size)
        bi_probability = self.bi_calibration.probabilities(raw.score)
        if self.style_calibration is not None and raw.cosine is not None:
            style = self.style_calibration(raw.cosine)
        else:
            style = raw.cosine
        if self.cross is None:
            probability = bi_probability
            same_book = probability >= self.threshold
            by_cross = np.zeros(len(pairs), dtype=bool)
        else:
            cross_probability = np.full(len(pairs), np.nan)
            passing = np.flatnonzero(bi_probability >= self.prefilter_threshold)
            if len(passing):
                cross_text1, cross_text2 = [text1[i] for i in passing], [text2[i] for i in passing]
                cross_raw = self.cross.raw_scores(cross_text1, cross_text2, batch_size=batch_size)
                cross_probability[passing] = self.cross_calibration.probabilities(cross_raw.margin)
                if check:
                    # Only the pairs the cross-encoder decides are subject to its limit.
                    for i, extra in zip(passing, self.cross.pair_warnings(cross_text1, cross_text2)):
                        warnings[i] = sorted(set(warnings[i] + extra))
            probability, same_book, by_cross = two_stage_decision(
                bi_probability, cross_probability, self.prefilter_threshold, self.cross_threshold
            )
        results = []
        for i in range(len(pairs)):
            p = float(probability[i])
            decided = bool(same_book[i])
            results.append(
                MatchResult(
                    same_book=decided,
                    probability=p,
                    confidence=p if decided else 1.0 - p,
                    style_similarity=None if style is None else float(style[i]),
                    stage=CROSS_ENCODER if by_cross[i] else BI_ENCODER,
                    warnings=tuple(warnings[i]),
                )
            )
        return results

    def score_file(
        self,
        input_path: str | os.PathLike,
        output_path: str | os.PathLike,
        batch_size: int = 64,
        skip_bad_lines: bool = False,
        block_size: int | None = None,
        style: bool = True,
        show_progress: bool = True,
    ) -> BatchReport:
        """Score a JSONL file of pairs into a JSONL file of results, streamed in blocks of pairs.

        Each output line: `line` (input line number), `id` when the input has one, and the result fields.
        The output appears only when complete (written to a temp file beside it, then renamed).
        """
        from bookmatch.progress import progress

        check_batch_size(batch_size, "batch size", InputError)
        input_path, output_path = Path(input_path), Path(output_path)
        block_size = block_size or max(batch_size * 8, 256)
        bad_lines: list[str] = []
        short = truncated = scored = 0
        start = time.perf_counter()
        check_pairs_input(input_path)  # a file, a pipe, /dev/stdin, or - for stdin
        # A killed run leaves its (pid-named) temp output; the next run into the same place removes it.
        sweep_dead(output_path.parent, re.escape(f".{output_path.name}.tmp-") + r"(?P<pid>\d+)")
        tmp = output_path.parent / f".{output_path.name}.tmp-{os.getpid()}"
        # Opened before any scoring: an output that cannot be written must fail in seconds, not after the run.
        try:
            output_path.parent.mkdir(parents=True, exist_ok=True)
            out = open(tmp, "w", encoding="utf-8")
        except OSError as err:
            raise InputError(
                f"cannot write the output {output_path}: {os_reason(err, output_path.parent)}; choose a writable location"
            ) from err
        rows = read_pairs_jsonl(
            input_path, skip_bad_lines=skip_bad_lines, bad_lines=bad_lines, skip_hint="--skip-bad-lines"
        )
        try:
            with out:
                for block in progress(
                    _blocks(rows, block_size), desc="scoring", unit="block", disable=None if show_progress else True
                ):
                    results = self.score_many([(r["text1"], r["text2"]) for _, r in block], batch_size=batch_size)
                    for (number, row), result in zip(block, results):
                        record: dict[str, Any] = {"line": number}
                        if "id" in row:
                            record["id"] = row["id"]
                        record.update(result.to_dict(style=style))
                        out.write(json.dumps(record, ensure_ascii=False) + "\n")
                        short += any("very short" in w for w in result.warnings)
                        truncated += any(TRUNCATED in w for w in result.warnings)
                    scored += len(block)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, output_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return BatchReport(scored, len(bad_lines), short, truncated, time.perf_counter() - start, bad_lines)


def _blocks(rows: Iterable[tuple[int, dict]], size: int) -> Iterator[list[tuple[int, dict]]]:
    block: list[tuple[int, dict]] = []
    for item in rows:
        block.append(item)
        if len(block) >= size:
            yield block
            block = []
    if block:
        yield block
