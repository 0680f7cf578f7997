"""The CPU image for real: scripts/docker_smoke.sh --quick builds docker/Dockerfile.cpu with docker or podman, then
runs `bookmatch --help`, the pipeline (tiny steps) and `bookmatch infer two-stage` inside it, as the image's user,
with a tiny corpus mounted read-only at /input and a temp folder at /vol, and no network.

Slow (a first build downloads and installs ~2 GB of wheels: 10-25 min on 2 cores; a rebuild after a code edit a
few minutes) and needs a working engine. The script's options come from BOOKMATCH_SMOKE_ARGS (default
`--local-base --host-pip`: the base image is pulled or built from Debian's packages, pip in the build uses this
machine's pip settings); `make smoke-container` runs this test (README "Docker")."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IMAGE_USER_UID = 10001  # docker/Dockerfile.cpu: useradd --uid 10001 bookmatch
DEFAULT_ARGS = "--local-base --host-pip"


def working_engine() -> str | None:
    """docker when its daemon answers, else podman when installed (the smoke script picks the same way)."""
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        return "docker"
    return "podman" if shutil.which("podman") else None


@pytest.mark.slow  # builds a 2 GB image and runs the pipeline in it: 5-25 min on 2 cores
@pytest.mark.timeout(3600)
def test_cpu_image_runs_the_pipeline_and_two_stage_inference(corpus_dir: Path) -> None:
    engine = working_engine()
    if engine is None:
        pytest.skip("no container engine: docker with a running daemon, or podman")
    args = shlex.split(os.environ.get("BOOKMATCH_SMOKE_ARGS", DEFAULT_ARGS))
    command = [
        "bash",
        str(REPO / "scripts" / "docker_smoke.sh"),
        "--quick",
        "--keep",
        "--engine",
        engine,
        "--books",
        str(corpus_dir / "books"),
        *args,
    ]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=3500)
    elapsed = time.perf_counter() - started
    print(proc.stdout[-12000:])
    kept = re.search(r"^kept (.+)$", proc.stdout, re.MULTILINE)
    try:
        assert proc.returncode == 0, f"--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}"
        assert "smoke test passed" in proc.stdout
        # The two-stage answer came from the cross-encoder trained in the container (the script's prefilter is 0).
        answer = re.search(r'^\{.*"stage": "cross-encoder".*\}$', proc.stdout, re.MULTILINE)
        assert answer, "no two-stage inference answer from the cross-encoder in the output"
        size = int(re.search(r"image size [\d.]+ GB \((\d+) bytes\)", proc.stdout).group(1))
        # CPU torch, the dependencies and the packaged MiniLM; a CUDA torch or a copied corpus would be far more.
        assert 0.5e9 < size < 3.5e9, f"image size {size / 1e9:.2f} GB"
        assert kept, "the script did not report its temp folder"
        vol = Path(kept.group(1)) / "vol" / "run"
        artifacts = [p for p in vol.rglob("*")]
        assert (vol / "models" / "book_matcher" / "final").is_dir(), "the teacher (cross-encoder) was not trained"
        assert (vol / "models" / "book_matcher_contrastive" / "calibration.json").is_file()
        if os.geteuid() == 0:  # a rootful engine keeps the container's uid on the host
            owners = {p.lstat().st_uid for p in artifacts}
            assert owners == {IMAGE_USER_UID}, f"artifact owners on the host: {owners}"
        print(
            f"container smoke test: {elapsed:.0f} s with {engine}, image {size / 1e9:.2f} GB, "
            f"{len(artifacts)} artifacts in /vol/run"
        )
    finally:
        if kept:
            shutil.rmtree(kept.group(1), ignore_errors=True)
