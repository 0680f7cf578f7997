"""Scoring pairs of passages: the `Matcher` API behind `bookmatch infer` (single, batch) and `evaluate`.

P(same book) = sigmoid((l1 - l0) / T) with the temperature T from `calibration.json` beside the model (1 when
absent); the decision threshold comes from the caller, else that file, else 0.5.

Two-stage: the bi-encoder scores every pair; a pair under the prefilter threshold is answered "different
book" at once (stage "bi-encoder"); the rest go to the cross-encoder, whose calibrated probability and
threshold decide (stage "cross-encoder").

Long texts: the bi-encoder reads a text longer than its `max_seq_length` tokens whole, as consecutive windows
whose pooled vectors it averages (up to `max_windows` windows; "truncate" models read the first window only);
the cross-encoder truncates each pair to its `max_seq_length`. A text cut short is scored with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from bookmatch.calibration import Calibration, StyleCalibration, load_calibration, load_score_cohort, load_style_calibration
from bookmatch.config import check_batch_size
from bookmatch.errors import BookmatchError, InputError, ModelLoadError, first_line
from bookmatch.storage import os_reason

# Fewer words than this and the style/topic signal is too thin to trust: scored, but with a warning.
MIN_RELIABLE_WORDS = 12
BI_ENCODER = "bi-encoder"
CROSS_ENCODER = "cross-encoder"


# ---------------------------------------------------------------------------------------------- reading input


def read_pairs_jsonl(
    path: str | os.PathLike,
    require_label: bool = False,
    skip_bad_lines: bool = False,
    bad_lines: list[str] | None = None,
    skip_hint: str | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each JSON line holding non-empty `text1` and `text2` (and `label` if required).

    A bad line raises InputError naming the file and line, or with `skip_bad_lines` is described in
    `bad_lines` (when given) and skipped. Blank lines are ignored. Bytes that are not UTF-8 are replaced.
    `skip_hint`: the caller's flag that skips bad lines (e.g. "--skip-bad-lines"), suggested in the error;
    None where the caller has no such flag, so the message never points at an option that does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"pairs file {path} does not exist")
    # utf-8-sig: a byte-order mark some editors write would otherwise make the first line bad JSON
    with open(path, encoding="utf-8-sig", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            problem = None
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                problem = f"not valid JSON ({err.msg})"
            else:
                problem = _pair_problem(row, require_label)
            if problem is None:
                yield number, row
                continue
            message = f"{path} line {number}: {problem}"
            if not skip_bad_lines:
                raise InputError(f"{message}; fix the line" + (f" or pass {skip_hint}" if skip_hint else ""))
            if bad_lines is not None:
                bad_lines.append(message)


def _pair_problem(row: Any, require_label: bool) -> str | None:
    if not isinstance(row, dict):
        return "expected a JSON object with text1 and text2"
    for key in ("text1", "text2"):
        if key not in row:
            return f"missing field {key!r}"
        if not isinstance(row[key], str):
            return f"field {key!r} must be a string"
        if not row[key].strip():
            return f"field {key!r} is empty"
        if not is_valid_unicode(row[key]):
            return f"field {key!r} holds a lone surrogate (e.g. \\ud800), which is not valid Unicode text; re-encode the line as UTF-8"
    if require_label:
        if "label" not in row:
            return "missing field 'label'"
        if row["label"] not in (0, 1, True, False):
            return f"label must be 0 or 1, got {row['label']!r}"
    return None


def is_valid_unicode(text: str) -> bool:
    """False for text holding lone surrogates (a JSON "\\ud800", or argv bytes that were not UTF-8): the
    tokenizer cannot take them, so they are bad input rather than something to score."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# ---------------------------------------------------------------------------------------------- models


def detect_model_kind(model_dir: str | os.PathLike) -> str:
    """"bi-encoder" or "cross-encoder", from the files `save_pretrained` wrote."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelLoadError(f"model folder {model_dir} does not exist: pass the `final/` folder written by `bookmatch train`")
    config_path = model_dir / "bookmatch_config.json"
    if config_path.exists():
        try:
            model_type = json.loads(config_path.read_text(encoding="utf-8")).get("model_type", "bi_encoder")
        except (OSError, ValueError, AttributeError) as err:
            raise ModelLoadError(f"{config_path} is not valid JSON ({err}); re-save the model") from err
        return CROSS_ENCODER if "cross" in str(model_type) else BI_ENCODER
    if (model_dir / "config.json").exists():
        if _looks_like_sequence_classifier(model_dir / "config.json"):
            return CROSS_ENCODER
        # A bare encoder's config.json (e.g. a bi-encoder that lost its bookmatch_config.json): calling it a
        # cross-encoder would send the user after the wrong problem.
        raise ModelLoadError(
            f"{model_dir} has no bookmatch_config.json and its config.json is not a sequence classifier: the folder is "
            "incomplete; pass the whole `final/` folder written by `bookmatch train` (or re-save the model)"
        )
    raise ModelLoadError(f"{model_dir} holds no model (no bookmatch_config.json or config.json): pass the `final/` folder written by `bookmatch train`")


def _looks_like_sequence_classifier(config_path: Path) -> bool:
    """Whether a Hugging Face config.json describes a 2-label sequence classifier (a cross-encoder)."""
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(config, dict):
        return False
    architectures = config.get("architectures")
    if architectures:
        return any(isinstance(a, str) and a.endswith("ForSequenceClassification") for a in architectures)
    # No architectures recorded: fall back on the label count of a 2-way head.
    id2label = config.get("id2label")
    return config.get("num_labels") == 2 or (isinstance(id2label, dict) and len(id2label) == 2)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _load_failure(kind: str, model_dir: Path, err: Exception) -> ModelLoadError:
    return ModelLoadError(f"cannot load the {kind} in {model_dir}: {first_line(err)}; re-save or re-train the model")


def resolve_device(device: str | None) -> str:
    """The device to load on: `device`, checked, or cuda when available. A bad name or an absent GPU is an
    input error, not a damaged model folder."""
    import torch

    if device is None:
        return default_device()
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise InputError(f"--device {device!r} is not a device torch knows: use cpu, cuda or cuda:N") from err
    if parsed.type == "cuda" and (not torch.cuda.is_available() or (parsed.index or 0) >= torch.cuda.device_count()):
        raise InputError(f"--device {device}: no such CUDA GPU is visible here ({torch.cuda.device_count()} found); use --device cpu")
    return device


def load_bi_encoder(model_dir: str | os.PathLike, device: str | None = None):
    from bookmatch.models.bi_encoder import BiEncoder

    device = resolve_device(device)
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelLoadError(f"model folder {model_dir} does not exist: pass the `final/` folder written by `bookmatch train`")
    try:
        return BiEncoder.from_pretrained(model_dir, device=device)
    except BookmatchError:
        raise
    except Exception as err:  # shape mismatches, truncated tokenizer files...: all mean a damaged folder
        raise _load_failure(BI_ENCODER, model_dir, err) from err


def load_cross_encoder(model_dir: str | os.PathLike, device: str | None = None):
    from bookmatch.models.cross_encoder import CrossEncoder

    device = resolve_device(device)
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelLoadError(f"cross-encoder folder {model_dir} does not exist: pass the `final/` folder written by `bookmatch train cross`")
    try:
        return CrossEncoder.from_pretrained(model_dir, device=device)
    except BookmatchError:
        raise
    except Exception as err:
        raise _load_failure(CROSS_ENCODER, model_dir, err) from err


TRUNCATED = "are read"  # marks the truncation warning (counted in batch reports)


def _truncation_warning(max_tokens: int) -> str:
    return f"a text is longer than {max_tokens} tokens: only its first {max_tokens} {TRUNCATED}"


def _pair_truncation_warning(max_tokens: int) -> str:
    return f"the two texts together are longer than the cross-encoder's {max_tokens} tokens: only {max_tokens} of their tokens {TRUNCATED}"


def _longer_than(max_tokens: int, special_tokens: int, words: Sequence[int], chars: Sequence[int], count_tokens) -> list[bool]:
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
            for start in progress(starts, desc="encoding", total=len(starts), unit="block", disable=None if show_progress else True):
                block = missing_keys[start : start + chunk]
                with autocast(self.precision, self.model.device.type):
                    emb = self.model.encode_texts([missing[k] for k in block], batch_size=batch_size)
                self.encoded_texts += len(block)
                for i, key in enumerate(block):
                    # clone: a cached row must not keep its whole block's tensors alive after eviction
                    row = (emb.pooled[i].clone(), emb.projected[i].clone(), emb.style[i].clone())
                    rows[key] = row
                    self._remember(key, row)
        if not keys:
            dim_h, dim_p = self.model.config.hidden_size, self.model.config.projection_dim
            return TextEmbeddings(torch.zeros(0, dim_h), torch.zeros(0, dim_p), torch.zeros(0, self.model.style_width))
        return TextEmbeddings(*(torch.stack([rows[k][j] for k in keys]) for j in range(3)))

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
        from bookmatch.models.bi_encoder import TextEmbeddings

        keys = [_text_key(t) for t in texts]
        values, missing = _split_cached(self._affinities, keys)
        if missing:
            rows = np.asarray(list(missing.values()))
            fresh = self.cohort.affinities(self.model, TextEmbeddings(*(t[rows] for t in embeddings)))
            for key, value in zip(missing, fresh):
                values[key] = float(value)
                self._remember(key, float(value), self._affinities)
        return np.asarray([values[key] for key in keys], dtype=np.float64)

    def raw_scores(self, text1: Sequence[str], text2: Sequence[str], batch_size: int = 64, show_progress: bool = False) -> RawScores:
        import torch

        from bookmatch.calibration import logit_margin

        # One embed call over both sides: a text on both sides, or in many pairs, is encoded once.
        emb = self.embed(list(text1) + list(text2), batch_size=batch_size, show_progress=show_progress)
        n = len(text1)
        from bookmatch.models.bi_encoder import TextEmbeddings

        side_a = TextEmbeddings(*(t[:n] for t in emb))
        side_b = TextEmbeddings(*(t[n:] for t in emb))
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
        over = _longer_than(
            max_tokens, 3,  # [CLS] and two [SEP]
            [len(a.split()) + len(b.split()) for a, b in zip(text1, text2)], [len(a) + len(b) for a, b in zip(text1, text2)],
            lambda unsure: self.pair_token_lengths([text1[i] for i in unsure], [text2[i] for i in unsure]),
        )
        return [[_pair_truncation_warning(max_tokens)] if is_over else [] for is_over in over]

    def raw_scores(self, text1: Sequence[str], text2: Sequence[str], batch_size: int = 64, show_progress: bool = False) -> RawScores:
        from bookmatch.calibration import logit_margin

        pairs = list(zip(text1, text2))
        if not pairs:
            return RawScores(margin=np.zeros(0))
        from bookmatch.precision import autocast

        with autocast(self.precision, self.model.device.type):
            logits = self.model.predict_logits(pairs, batch_size=batch_size)
        return RawScores(margin=logit_margin(logits))


def load_scorer(model_dir: str | os.PathLike, kind: str | None = None, device: str | None = None, precision: str = "no"):
    kind = kind or detect_model_kind(model_dir)
    if kind == CROSS_ENCODER:
        return CrossEncoderScorer(load_cross_encoder(model_dir, device), precision)
    return BiEncoderScorer(load_bi_encoder(model_dir, device), precision=precision)


# ---------------------------------------------------------------------------------------------- two-stage


def two_stage_decision(bi_probability: np.ndarray, cross_probability: np.ndarray, prefilter_threshold: float, cross_threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
        out: dict[str, Any] = {"same_book": self.same_book, "confidence": round(self.confidence, 6), "probability": round(self.probability, 6)}
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
            raise ValueError("this calibration was fitted on cohort-normalised margins: give the bi-encoder scorer its score cohort (load_score_cohort)")
        self.bi = bi_scorer
        self.bi_calibration = bi_calibration
        self.style_calibration = style_calibration
        self.cross = cross_scorer
        self.cross_calibration = cross_calibration or Calibration()
        self.threshold = float(threshold if threshold is not None else bi_calibration.threshold)
        self.prefilter_threshold = float(prefilter_threshold if prefilter_threshold is not None else self.threshold)
        self.cross_threshold = float(cross_threshold if cross_threshold is not None else self.cross_calibration.threshold)
        for name, value in (("threshold", self.threshold), ("prefilter threshold", self.prefilter_threshold), ("cross threshold", self.cross_threshold)):
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
    ) -> "Matcher":
        """Load the bi-encoder in `model_dir` (and a cross-encoder for two-stage) with the calibration files
        in their parent folders, when present. `precision`: the encoders' autocast (see BiEncoderScorer)."""
        if detect_model_kind(model_dir) != BI_ENCODER:
            raise ModelLoadError(f"{model_dir} holds a cross-encoder; pass the bi-encoder as the model (and the cross-encoder as the cross model)")
        bi_calibration = load_calibration(model_dir, BI_ENCODER)
        bi = BiEncoderScorer(load_bi_encoder(model_dir, device), cache_size=cache_size, precision=precision,
                             cohort=load_score_cohort(model_dir, bi_calibration))
        cross = cross_calibration = None
        if cross_model is not None:
            if detect_model_kind(cross_model) != CROSS_ENCODER:
                raise ModelLoadError(f"{cross_model} is not a cross-encoder folder; pass the `final/` folder of `bookmatch train cross`")
            cross = CrossEncoderScorer(load_cross_encoder(cross_model, device), precision)
            cross_calibration = load_calibration(cross_model, CROSS_ENCODER)
        return cls(
            bi, bi_calibration or Calibration(), load_style_calibration(model_dir), cross, cross_calibration,
            threshold=threshold, prefilter_threshold=prefilter_threshold, cross_threshold=cross_threshold,
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
        out = [[f"a text has only {n} word(s): scores of very short texts are unreliable"] if n < MIN_RELIABLE_WORDS else []
               for n in words]
        over = _longer_than(max_tokens, 2, words, [len(text) for text in texts],  # [CLS] and [SEP]
                            lambda unsure: self._token_lengths([texts[i] for i in unsure]))
        for warnings, is_over in zip(out, over):
            if is_over:
                warnings.append(_truncation_warning(max_tokens))
        return out

    def _token_lengths(self, texts: list[str]) -> list[int]:
        encoded = self.bi.tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]

    # scoring ---------------------------------------------------------------------------------------------
    def score(self, text1: str, text2: str) -> MatchResult:
        return self.score_many([(text1, text2)])[0]

    def score_many(self, pairs: Iterable[tuple[str, str]], batch_size: int = 64, check: bool = True) -> list[MatchResult]:
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
                    raise InputError(f"pair {number}: {name} holds a lone surrogate, which is not valid Unicode text: pass UTF-8 text")
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
            probability, same_book, by_cross = two_stage_decision(bi_probability, cross_probability, self.prefilter_threshold, self.cross_threshold)
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
        if not input_path.is_file():
            raise InputError(f"pairs file {input_path} does not exist")
        tmp = output_path.parent / f".{output_path.name}.tmp-{os.getpid()}"
        # Opened before any scoring: an output that cannot be written must fail in seconds, not after the run.
        try:
            output_path.parent.mkdir(parents=True, exist_ok=True)
            out = open(tmp, "w", encoding="utf-8")
        except OSError as err:
            raise InputError(f"cannot write the output {output_path}: {os_reason(err, output_path.parent)}; choose a writable location") from err
        rows = read_pairs_jsonl(input_path, skip_bad_lines=skip_bad_lines, bad_lines=bad_lines, skip_hint="--skip-bad-lines")
        try:
            with out:
                for block in progress(_blocks(rows, block_size), desc="scoring", unit="block", disable=None if show_progress else True):
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
