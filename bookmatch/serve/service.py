"""What the HTTP service holds: its config, the models (loaded once, in the background), and the calls into
the library that the routes make. Nothing here knows about HTTP."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bookmatch.errors import InputError

log = logging.getLogger(__name__)

MODES = ("contrastive", "two-stage")


@dataclass
class ServeConfig:
    model: str  # the bi-encoder's final/ folder
    cross_model: str | None = None  # a cross-encoder's final/ folder: enables mode "two-stage"
    index: str | None = None  # a `bookmatch index` folder: enables /v1/search
    host: str = "127.0.0.1"
    port: int = 8000
    device: str | None = None
    precision: str = "auto"
    threshold: float | None = None
    prefilter_threshold: float | None = None
    cross_threshold: float | None = None
    max_pairs: int = 256  # pairs in one request
    max_text_chars: int = 100_000  # characters of one text (413 above)
    max_batch_pairs: int = 256  # pairs the batcher puts in one model call
    max_wait_ms: float = 5.0  # how long the batcher waits for more requests once one arrived
    batch_size: int = 64  # texts per encoder forward pass
    cache_size: int = 4096  # texts whose embeddings the scorer keeps
    graceful_timeout_s: int = 30  # how long a shutdown waits for requests in flight

    def __post_init__(self) -> None:
        for name in ("max_pairs", "max_text_chars", "max_batch_pairs", "batch_size"):
            if getattr(self, name) < 1:
                raise InputError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise InputError(f"max-wait-ms must be >= 0, got {self.max_wait_ms}")

    @property
    def max_body_bytes(self) -> int:
        """The largest request body read at all: every text at its limit (4 bytes a character at most)."""
        return 2 * self.max_pairs * self.max_text_chars * 4 + 65_536


class Service:
    """The loaded models and the scoring, search and explain calls behind the routes.

    `load()` runs on a background thread at start-up so /healthz can answer 503 until it is done.
    """

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.matchers: dict[str, Any] = {}
        self.index = None
        self.error: str | None = None
        self._ready = threading.Event()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def modes(self) -> list[str]:
        return list(self.matchers)

    def load(self) -> None:
        from bookmatch.errors import BookmatchError
        from bookmatch.inference import Matcher

        config = self.config
        try:
            full = Matcher.from_pretrained(
                config.model,
                cross_model=config.cross_model,
                device=config.device,
                threshold=config.threshold,
                prefilter_threshold=config.prefilter_threshold,
                cross_threshold=config.cross_threshold,
                cache_size=config.cache_size,
                precision=config.precision,
            )
            # contrastive shares the two-stage matcher's bi-encoder scorer (one model, one embedding cache)
            self.matchers["contrastive"] = (
                full
                if full.cross is None
                else Matcher(full.bi, full.bi_calibration, full.style_calibration, threshold=config.threshold)
            )
            if full.cross is not None:
                self.matchers["two-stage"] = full
            if config.index is not None:
                from bookmatch.search import BookIndex

                self.index = BookIndex.load(config.index)
                self.index.check_model(self.bi_scorer.model)
        except BookmatchError as err:
            self.error = str(err)
            log.error("cannot start: %s", err)
            return
        except Exception as err:  # noqa: BLE001 - reported on /healthz and in the log, never a crash loop
            self.error = f"{type(err).__name__}: {err}"
            log.exception("cannot start")
            return
        self._ready.set()
        log.info("models loaded: modes %s%s", ", ".join(self.modes), ", search index ready" if self.index else "")

    @property
    def bi_scorer(self):
        return self.matchers["contrastive"].bi

    @property
    def texts_encoded(self) -> int:
        return self.bi_scorer.encoded_texts if self.ready else 0

    # calls (each runs on the model thread) --------------------------------------------------------------
    def score_batch(self, mode: str, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
        results = self.matchers[mode].score_many(pairs, batch_size=self.config.batch_size)
        return [dict(r.to_dict(style=True), warnings=list(r.warnings)) for r in results]

    def explain(self, text1: str, text2: str) -> dict[str, Any]:
        """Sentence evidence from the bi-encoder's margin (in two-stage mode too: the cross-encoder reads the
        pair jointly, and leaving one sentence out at a time would cost it a full pass per sentence)."""
        from bookmatch.explain import explain_pair

        return explain_pair(self.matchers["contrastive"], text1, text2).to_dict()

    def search(self, text: str, k: int) -> list[dict[str, Any]]:
        from bookmatch.search import search_texts

        return search_texts(self.index, self.bi_scorer, [text], k=k, batch_size=self.config.batch_size)[0]


def check_model_folders(config: ServeConfig) -> None:
    """Fail in a second, with one line, on folders that cannot hold the models (before the server starts)."""
    from bookmatch.inference import BI_ENCODER, CROSS_ENCODER, detect_model_kind

    if detect_model_kind(config.model) != BI_ENCODER:
        raise InputError(
            f"--model {config.model} holds a cross-encoder; pass the bi-encoder (and --cross-model for two-stage)"
        )
    if config.cross_model is not None and detect_model_kind(config.cross_model) != CROSS_ENCODER:
        raise InputError(f"--cross-model {config.cross_model} is not a cross-encoder folder")
    if config.index is not None and not (Path(config.index) / "manifest.json").is_file():
        raise InputError(
            f"--index {config.index} is not a search index (no manifest.json): build one with `bookmatch index`"
        )
