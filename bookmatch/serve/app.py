"""The HTTP app: FastAPI routes over a `Service`, with JSON errors, a body-size guard and Prometheus metrics.

Routes: GET /healthz (503 until the models are loaded), GET /metrics, POST /v1/score, POST /v1/search; the
OpenAPI docs at /docs. Every error is JSON `{"error": "..."}` naming the problem: 400 for a body that is not
JSON, 413 for a body or a text over the size limits, 422 for a missing or mistyped field, an unknown mode or
too many pairs, 503 before the models are loaded. The body is parsed as data only (JSON into typed models):
nothing a client sends is ever evaluated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from bookmatch.inference.pairs_file import is_valid_unicode
from bookmatch.serve.batching import DynamicBatcher
from bookmatch.serve.metrics import ServiceMetrics
from bookmatch.serve.service import Service

log = logging.getLogger(__name__)


class Pair(BaseModel):
    text1: str = Field(description="First passage.")
    text2: str = Field(description="Second passage.")


class ScoreRequest(BaseModel):
    pairs: list[Pair] = Field(description="Pairs to score (at most the server's max pairs).")
    mode: Literal["contrastive", "two-stage"] = Field("contrastive", description="two-stage needs --cross-model.")
    explain: bool = Field(False, description="Add per-sentence evidence (bi-encoder margin) to each result.")


class SearchRequest(BaseModel):
    text: str = Field(description="The passage whose source book is sought.")
    k: int = Field(10, ge=1, le=100, description="How many books to return.")


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is refused (413) before it is read whole, whether
    it declares its length or streams it in chunks."""

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await JSONResponse(
                _error_body(f"request body of {int(declared)} bytes is over the limit of {self.limit}"), status_code=413
            )(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _BodyTooLarge()
            return message

        return await self.app(scope, limited_receive, send)


def _error_body(message: str) -> dict[str, str]:
    return {"error": message}


def _validation_message(err: RequestValidationError) -> tuple[int, str]:
    first = err.errors()[0] if err.errors() else {}
    if first.get("type") == "json_invalid":
        return (
            400,
            'the request body is not valid JSON: send an object such as {"pairs": [{"text1": "...", "text2": "..."}]}',
        )
    location = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
    kind = first.get("type", "")
    if kind == "missing":
        return 422, f"missing field {location!r}"
    return 422, f"{location}: {first.get('msg', 'invalid value')}"


def _check_texts(texts: list[tuple[str, str]], max_chars: int) -> None:
    for name, text in texts:
        if len(text) > max_chars:
            raise ApiError(
                413, f"{name} has {len(text)} characters, over the limit of {max_chars}: send a shorter passage"
            )
        if not text.strip():
            raise ApiError(422, f"{name} is empty: give non-empty passages")
        if not is_valid_unicode(text):
            raise ApiError(422, f"{name} holds a lone surrogate, which is not valid Unicode text: send UTF-8 text")


def create_app(service: Service, load_in_background: bool = True) -> FastAPI:
    """The app over `service`; its models load on a background thread at start-up (or not at all when
    `load_in_background` is False and the caller has loaded them)."""
    config = service.config
    metrics = ServiceMetrics(texts_encoded=lambda: service.texts_encoded, ready=lambda: service.ready)
    batcher = DynamicBatcher(
        service.score_batch,
        max_batch_pairs=config.max_batch_pairs,
        max_wait_ms=config.max_wait_ms,
        on_batch=metrics.observe_batch,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if load_in_background and not service.ready:
            threading.Thread(target=service.load, name="bookmatch-load", daemon=True).start()
        batcher.start()
        yield
        # uvicorn has already waited for the requests in flight; anything still queued is finished here
        await batcher.stop()
        batcher.executor.shutdown(wait=True)

    app = FastAPI(
        title="bookmatch",
        summary="Are two passages from the same book? Which book is a passage from?",
        lifespan=lifespan,
    )
    app.state.service, app.state.metrics, app.state.batcher = service, metrics, batcher
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)

    @app.middleware("http")
    async def observe(request: Request, call_next):
        start = time.perf_counter()
        with metrics.in_flight.track_inprogress():
            response = await call_next(request)
        route = request.scope.get("route")
        metrics.observe_request(getattr(route, "path", "unmatched"), response.status_code, time.perf_counter() - start)
        return response

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        return JSONResponse(_error_body(err.message), status_code=err.status)

    @app.exception_handler(_BodyTooLarge)
    async def too_large(request: Request, err: _BodyTooLarge):
        return JSONResponse(
            _error_body(f"request body is over the limit of {config.max_body_bytes} bytes"), status_code=413
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        status, message = _validation_message(err)
        return JSONResponse(_error_body(message), status_code=status)

    _add_routes(app, service, metrics, batcher)
    return app


def _require_ready(service: Service) -> None:
    if not service.ready:
        raise ApiError(503, f"models failed to load: {service.error}" if service.error else "models are still loading")


def _add_routes(app: FastAPI, service: Service, metrics: ServiceMetrics, batcher: DynamicBatcher) -> None:
    config = service.config

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        if not service.ready:
            status = "error" if service.error else "loading"
            return JSONResponse({"status": status, "error": service.error}, status_code=503)
        return JSONResponse({"status": "ok", "modes": service.modes, "search": service.index is not None})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/v1/score")
    async def score(body: ScoreRequest) -> dict[str, Any]:
        """Score pairs: same_book, probability, confidence, style_similarity, stage (and evidence on request)."""
        _require_ready(service)
        if body.mode not in service.modes:
            raise ApiError(422, f"mode {body.mode!r} needs a cross-encoder: start the server with --cross-model")
        if not body.pairs:
            raise ApiError(422, "pairs is empty: send at least one pair")
        if len(body.pairs) > config.max_pairs:
            raise ApiError(
                422, f"too many pairs: {len(body.pairs)}, the limit is {config.max_pairs}; split the request"
            )
        pairs = [(p.text1, p.text2) for p in body.pairs]
        _check_texts(
            [
                (f"pairs[{i}].{side}", text)
                for i, pair in enumerate(pairs)
                for side, text in zip(("text1", "text2"), pair)
            ],
            config.max_text_chars,
        )
        results = await batcher.submit(body.mode, pairs)
        if body.explain:
            loop = asyncio.get_running_loop()
            for result, (text1, text2) in zip(results, pairs):
                result["evidence"] = await loop.run_in_executor(batcher.executor, service.explain, text1, text2)
        return {"results": results, "mode": body.mode}

    @app.post("/v1/search")
    async def search(body: SearchRequest) -> dict[str, Any]:
        """The k books of the index most likely to hold the passage, with their best-matching passages."""
        _require_ready(service)
        if service.index is None:
            raise ApiError(422, "no search index loaded: start the server with --index (built by `bookmatch index`)")
        _check_texts([("text", body.text)], config.max_text_chars)
        loop = asyncio.get_running_loop()
        books = await loop.run_in_executor(batcher.executor, service.search, body.text, body.k)
        return {"books": books}
