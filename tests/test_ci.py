"""`.ci/run` and the Makefile it calls, read with `make -n` (nothing is installed): what a clean CPU machine gets."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def make_dry_run(target: str, *variables: str) -> list[list[str]]:
    """The commands `make TARGET` would run, split into words (recipe comments dropped)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    proc = subprocess.run(
        ["make", "-n", target, "PYTHON=python3", *variables], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return [
        shlex.split(line) for line in proc.stdout.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]


def _torch_install(commands: list[list[str]]) -> list[str]:
    torch_installs = [c for c in commands if "pip" in c and "install" in c and any(w.startswith("torch==") for w in c)]
    assert torch_installs, f"`make install` pins no torch before the project: {commands}"
    command = torch_installs[0]
    assert commands.index(command) < next(
        i for i, c in enumerate(commands) if any(w.startswith("-e") or w.startswith(".[") for w in c)
    )
    return command


def test_install_pins_torch_first_and_can_take_the_cpu_wheel_index() -> None:
    """PyPI's Linux torch wheel is the CUDA build (several GB of nvidia-* wheels): the pin keeps the version,
    TORCH_INDEX the CPU build where pip's own indexes do not hold it. The default uses pip's configured indexes:
    this workplace's hold the CPU build and cannot reach download.pytorch.org."""
    dockerfile = (REPO / "docker" / "Dockerfile.cpu").read_text(encoding="utf-8")
    cpu_index = re.search(r"ARG TORCH_INDEX_URL=(\S+/whl/cpu)\b", dockerfile).group(1)
    version = re.search(r"ARG TORCH_VERSION=(\S+)", dockerfile).group(1)
    default = _torch_install(make_dry_run("install"))
    assert f"torch=={version}" in default, "the Makefile and the CPU image pin different torch versions"
    assert "--index-url" not in default
    chosen = _torch_install(make_dry_run("install", f"TORCH_INDEX={cpu_index}"))
    assert chosen[chosen.index("--index-url") + 1] == cpu_index
