"""sky/serve.yaml: its `service:` section as SkyPilot's loader reads it, and its `run:` line started locally on
127.0.0.1 (a temp folder standing in for the bucket) and answered through a real HTTP client."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
from test_serve import TEXTS, _wait_healthy, free_port
from test_sky_yamls import REPO, SETUP_ENV, Workspace, editable_venv, load_with_skypilot

SERVE_YAML = REPO / "sky" / "serve.yaml"


@pytest.fixture(scope="module")
def serve_task() -> dict:
    entry = load_with_skypilot([SERVE_YAML], env_overrides={"ARTIFACTS_BUCKET": "local-artifacts"})["files"][
        str(SERVE_YAML)
    ]
    assert "error" not in entry, entry.get("error")
    return entry["tasks"][0]


def test_serve_yaml_has_a_service_with_a_readiness_probe(serve_task: dict) -> None:
    service = serve_task["service"]
    assert service is not None, "no service: section"
    probe = service["readiness_probe"]
    assert probe["path"] == "/healthz" and probe["initial_delay_seconds"] >= 60
    policy = service["replica_policy"]
    assert 1 <= policy["min_replicas"] <= policy["max_replicas"] and policy["target_qps_per_replica"] > 0
    assert "bookmatch serve" in serve_task["run"]


def test_serve_yaml_run_line_serves_on_loopback(serve_task: dict, models, tmp_path: Path) -> None:
    workspace = Workspace(tmp_path / "ws", models["bi"])
    editable_venv(workspace.home)  # what sky/setup.sh leaves (its real install is a slow test in test_sky_yamls)
    shutil.copytree(models["bi"], workspace.localize(serve_task["envs"]["MODEL_DIR"]))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYPILOT_") and k != "PYTHONPATH"}
    env.update({k: workspace.localize(v) for k, v in serve_task["envs"].items() if v is not None})
    env.update(SETUP_ENV)
    env.update(
        {
            "HOME": str(workspace.home),
            "ARTIFACTS_BUCKET": "local-artifacts",
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "HF_HUB_OFFLINE": "1",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "BOOKMATCH_ARGS": "--precision no",
        }
    )
    log = open(tmp_path / "serve.log", "w+", encoding="utf-8")
    proc = subprocess.Popen(
        ["bash", "-c", "set -e\n" + workspace.localize(serve_task["setup"] + "\n" + serve_task["run"])],
        env=env,
        cwd=workspace.cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        answer = httpx.post(f"{url}/v1/score", json={"pairs": [{"text1": TEXTS[0], "text2": TEXTS[1]}]}, timeout=60)
        assert answer.status_code == 200, answer.text
        result = answer.json()["results"][0]
        assert 0.0 <= result["probability"] <= 1.0 and result["stage"] == "bi-encoder"
        assert httpx.get(f"{url}/metrics", timeout=30).status_code == 200
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the group this test started: bash and the server under it
            proc.wait(timeout=60)
        log.seek(0)
        print(log.read()[-3000:])
        log.close()
