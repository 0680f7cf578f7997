"""`bookmatch serve`: the matcher (and optionally a search index) as an HTTP service."""

from __future__ import annotations

import click

from bookmatch.cli.options import precision_option


@click.command()
@click.option(
    "--model", "model_dir", required=True, type=click.Path(file_okay=False), help="The bi-encoder's final/ folder."
)
@click.option(
    "--cross-model",
    "cross_model_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="A cross-encoder's final/ folder: enables mode two-stage.",
)
@click.option(
    "--index",
    "index_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="A folder written by `bookmatch index`: enables POST /v1/search.",
)
@click.option("--host", default="127.0.0.1", help="Address to listen on (0.0.0.0 to accept other machines).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000)
@click.option("--device", default=None, help="torch device [default: cuda if available, else cpu].")
@precision_option("auto")
@click.option("--max-pairs", type=click.IntRange(min=1), default=256, help="Pairs one request may send.")
@click.option(
    "--max-text-chars", type=click.IntRange(min=1), default=100_000, help="Characters of one text (413 above)."
)
@click.option(
    "--max-batch-pairs", type=click.IntRange(min=1), default=256, help="Pairs the batcher scores in one model call."
)
@click.option(
    "--max-wait-ms",
    type=click.FloatRange(min=0),
    default=5.0,
    help="How long the batcher waits for more requests once one has arrived.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, help="Texts per encoder forward pass.")
@click.option(
    "--cache-size",
    type=click.IntRange(min=0),
    default=4096,
    help="Texts whose embeddings are kept across requests (0 = none; a text repeated within a batch is still encoded once).",
)
@click.option(
    "--graceful-timeout",
    type=click.IntRange(min=1),
    default=30,
    help="Seconds a shutdown (SIGTERM, Ctrl-C) waits for the requests in flight.",
)
def serve(
    model_dir,
    cross_model_dir,
    index_dir,
    host,
    port,
    device,
    precision,
    max_pairs,
    max_text_chars,
    max_batch_pairs,
    max_wait_ms,
    batch_size,
    cache_size,
    graceful_timeout,
):
    """Serve POST /v1/score (and /v1/search with --index), GET /healthz, /metrics, OpenAPI docs at /docs."""
    from bookmatch.serve import ServeConfig, run_server

    run_server(
        ServeConfig(
            model=model_dir,
            cross_model=cross_model_dir,
            index=index_dir,
            host=host,
            port=port,
            device=device,
            precision=precision,
            max_pairs=max_pairs,
            max_text_chars=max_text_chars,
            max_batch_pairs=max_batch_pairs,
            max_wait_ms=max_wait_ms,
            batch_size=batch_size,
            graceful_timeout_s=graceful_timeout,
            cache_size=cache_size,
        )
    )
