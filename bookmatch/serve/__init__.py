"""`bookmatch serve`: the matcher (and a search index) behind HTTP.

FastAPI on uvicorn: typed request models give the OpenAPI docs (/docs) and refuse malformed bodies before any
model code runs; uvicorn's graceful shutdown finishes the requests in flight. Concurrent requests are batched
on the model thread (`batching.DynamicBatcher`).
"""

from bookmatch.serve.app import create_app
from bookmatch.serve.service import MODES, ServeConfig, Service, check_model_folders


def run_server(config: ServeConfig) -> None:
    """Serve until SIGINT/SIGTERM; a shutdown stops accepting connections and finishes the requests in flight."""
    import uvicorn

    check_model_folders(config)
    app = create_app(Service(config))
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        timeout_graceful_shutdown=config.graceful_timeout_s,
        log_level="info",
        access_log=False,
    )


__all__ = ["MODES", "ServeConfig", "Service", "check_model_folders", "create_app", "run_server"]
