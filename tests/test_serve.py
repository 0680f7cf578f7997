"""`bookmatch serve`: answers through a real HTTP client on 127.0.0.1, the same numbers as `bookmatch infer`,
dynamic batching, JSON errors, metrics, and a graceful shutdown of the CLI's server process."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from conftest import SAMPLE_TEXTS

REPO = Path(__file__).resolve().parents[1]
TEXTS = list(dict.fromkeys(SAMPLE_TEXTS))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ThreadedServer:
    """uvicorn serving an app on 127.0.0.1 in a thread of this process (cheaper than a process per test)."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            assert time.time() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


def make_server(models, load: bool = True, **config):
    from bookmatch.serve import ServeConfig, Service, create_app

    service = Service(ServeConfig(model=str(models["bi"]), cross_model=str(models["cross"]), precision="no", **config))
    if load:
        service.load()
        assert service.ready, service.error
    return ThreadedServer(create_app(service, load_in_background=False)), service


@pytest.fixture(scope="module")
def server(models):
    srv, _ = make_server(models, max_pairs=8, max_text_chars=2000, max_wait_ms=50)
    with srv:
        yield srv


def pairs_for(n: int, offset: int = 0) -> list[dict[str, str]]:
    return [
        {"text1": TEXTS[(i + offset) % len(TEXTS)], "text2": TEXTS[(i + offset + 1 + i // len(TEXTS)) % len(TEXTS)]}
        for i in range(n)
    ]


def metric(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                total += sample.value
    return total


def test_healthz_is_503_until_the_models_are_loaded(models) -> None:
    srv, service = make_server(models, load=False)
    with srv, httpx.Client(base_url=srv.url) as client:
        early = client.get("/healthz")
        assert early.status_code == 503 and early.json()["status"] == "loading"
        assert client.post("/v1/score", json={"pairs": pairs_for(1)}).status_code == 503
        service.load()
        ready = client.get("/healthz")
        assert ready.status_code == 200 and ready.json()["modes"] == ["contrastive", "two-stage"]
        assert metric(client.get("/metrics").text, "bookmatch_ready") == 1.0


@pytest.mark.parametrize("mode", ["contrastive", "two-stage"])
def test_service_answers_the_numbers_of_bookmatch_infer(server, models, tmp_path: Path, mode: str) -> None:
    """Concurrent requests (batched together) give what `bookmatch infer --input` writes for the same pairs."""
    from bookmatch.cli import main

    pairs = pairs_for(12, offset=3)
    pairs_file = tmp_path / "pairs.jsonl"
    pairs_file.write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    args = (
        ["contrastive", "--model", str(models["bi"])]
        if mode == "contrastive"
        else ["two-stage", "--bi-model", str(models["bi"]), "--cross-model", str(models["cross"])]
    )
    result = CliRunner().invoke(
        main,
        [
            "infer",
            *args,
            "--input",
            str(pairs_file),
            "--output",
            str(tmp_path / "out.jsonl"),
            "--precision",
            "no",
            "--style-sim",
        ],
    )
    assert result.exit_code == 0, result.output
    expected = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    with httpx.Client(base_url=server.url, timeout=120) as client, ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(
                lambda chunk: client.post("/v1/score", json={"pairs": chunk, "mode": mode}),
                [pairs[i : i + 3] for i in range(0, len(pairs), 3)],
            )
        )
    got = [r for answer in answers for r in answer.json()["results"]]
    assert all(a.status_code == 200 for a in answers)
    for mine, theirs in zip(got, expected, strict=True):
        assert mine["same_book"] == theirs["same_book"] and mine["stage"] == theirs["stage"]
        for key in ("probability", "confidence", "style_similarity"):
            # rounded to 6 places by both; batch composition moves float32 sums by ~1e-7
            assert mine[key] == pytest.approx(theirs[key], abs=2e-6), key


def test_concurrent_requests_share_a_batch_and_a_repeated_text_is_encoded_once(models) -> None:
    srv, service = make_server(models, max_wait_ms=300)
    shared = TEXTS[0] + " The shared passage, sent by every client."
    others = [f"{TEXTS[i % len(TEXTS)]} Client number {i} wrote this one." for i in range(8)]
    with srv, httpx.Client(base_url=srv.url, timeout=120) as client, ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda text: client.post("/v1/score", json={"pairs": [{"text1": shared, "text2": text}]}), others)
        )
        scraped = client.get("/metrics").text
    assert all(a.status_code == 200 for a in answers)
    requests_per_batch = metric(scraped, "bookmatch_batch_requests_sum") / metric(
        scraped, "bookmatch_batch_requests_count"
    )
    assert requests_per_batch > 1, "no two requests were scored in one model call"
    assert service.texts_encoded == 9, "the shared text was encoded more than once"
    assert metric(scraped, "bookmatch_texts_encoded") == 9
    assert metric(scraped, "bookmatch_pairs_scored_total") == 8


def test_bad_requests_get_a_json_error_naming_the_problem(server) -> None:
    cases = [
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
        ({"json": {"pairs": [{"text1": "a passage"}]}}, 422, "pairs.0.text2"),
        ({"json": {"paris": []}}, 422, "'pairs'"),
        ({"json": {"pairs": pairs_for(9)}}, 422, "too many pairs"),
        ({"json": {"pairs": [{"text1": "x" * 2001, "text2": "a passage"}]}}, 413, "2001 characters"),
        ({"json": {"pairs": pairs_for(1), "mode": "three-stage"}}, 422, "mode"),
        ({"json": {"pairs": [{"text1": "   ", "text2": "a passage"}]}}, 422, "empty"),
        ({"json": {"pairs": [{"text1": 5, "text2": "a passage"}]}}, 422, "pairs.0.text1"),
        ({"json": ["a list"]}, 422, "body"),
        (
            {
                "content": b'{"pairs": [{"text1": "\\ud800", "text2": "a passage"}]}',
                "headers": {"content-type": "application/json"},
            },
            422,
            "surrogate",
        ),
        (
            {"content": b"x" * (40 * 1024 * 1024), "headers": {"content-type": "application/json"}},
            413,
            "over the limit",
        ),
    ]
    with httpx.Client(base_url=server.url, timeout=60) as client:
        before = metric(client.get("/metrics").text, "bookmatch_request_errors_total")
        for request, status, words in cases:
            answer = client.post("/v1/score", **request)
            assert answer.status_code == status, (request.get("json"), answer.text)
            assert words in answer.json()["error"], answer.json()
        # nothing it was sent broke it
        assert client.get("/healthz").status_code == 200
        assert client.post("/v1/score", json={"pairs": pairs_for(1)}).status_code == 200
        after = client.get("/metrics").text
        assert metric(after, "bookmatch_request_errors_total") - before == len(cases)
        assert metric(after, "bookmatch_request_latency_seconds_count", {"route": "/v1/score"}) >= len(cases)
        assert client.post("/v1/search", json={"text": "a passage"}).status_code == 422  # no index loaded


def test_explain_through_the_service(server) -> None:
    pair = {"text1": TEXTS[4] + " " + TEXTS[0], "text2": TEXTS[1] + " Then Dr. Jones left."}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        answer = client.post("/v1/score", json={"pairs": [pair], "explain": True}).json()["results"][0]
    evidence = answer["evidence"]
    assert len(evidence["sentence_weights1"]) == 3 and len(evidence["sentence_weights2"]) == 3
    assert [n["name"] for n in evidence["shared_names"]] == ["jones"]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"server exited: {proc.stderr.read()[-3000:] if proc.stderr else ''}"
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError("server did not become healthy")


def _in_flight(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return float(re.search(r"^bookmatch_requests_in_flight (\S+)$", text, re.M).group(1))


def test_cli_server_finishes_requests_in_flight_on_sigterm(models, tmp_path: Path) -> None:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    log = open(tmp_path / "server.log", "w+", encoding="utf-8")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bookmatch",
            "serve",
            "--model",
            str(models["bi"]),
            "--port",
            str(port),
            "--precision",
            "no",
            "--graceful-timeout",
            "300",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        long_pairs = [
            {"text1": " ".join(TEXTS) * 3 + f" {i}", "text2": " ".join(reversed(TEXTS)) * 3 + f" {i}"}
            for i in range(128)
        ]
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(httpx.post, f"{url}/v1/score", json={"pairs": long_pairs}, timeout=300)
            # SIGTERM only once the server holds the request (the /metrics call itself is the other one in flight):
            # a fixed sleep raced a loaded CI machine, where the post had not arrived yet
            deadline = time.monotonic() + 120
            while _in_flight(url) < 2 and not pending.done() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not pending.done(), "the request finished before the shutdown could test anything"
            proc.send_signal(signal.SIGTERM)
            answer = pending.result()
        assert answer.status_code == 200 and len(answer.json()["results"]) == 128
        # uvicorn re-raises the signal it caught once the shutdown is complete, so the exit says SIGTERM
        assert proc.wait(timeout=120) in (0, -signal.SIGTERM)
        log.seek(0)
        assert "Application shutdown complete" in log.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        log.seek(0)
        print(log.read()[-3000:])
        log.close()
