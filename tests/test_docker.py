"""The Dockerfiles and the smoke script, checked as text (no Docker engine is needed or used); the smoke script's
CPU run also runs for real, with `docker` answered by the image's entrypoint on this machine."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = [REPO / "docker" / "Dockerfile.cuda", REPO / "docker" / "Dockerfile.cpu"]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    joined, current = [], ""
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        joined.append(current + stripped)
        current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1] if " " in text else "") for text in joined]


def resolve_args(text: str, defaults: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: defaults.get(m.group(1), m.group(0)), text)


def base_images(path: Path) -> list[str]:
    defaults: dict[str, str] = {}
    stages: set[str] = set()
    images = []
    for name, args in instructions(path):
        if name == "ARG" and "=" in args:
            key, value = args.split("=", 1)
            defaults.setdefault(key.strip(), value.strip().strip('"'))
        if name == "FROM":
            parts = [p for p in args.split() if not p.startswith("--")]
            image = resolve_args(parts[0], defaults)
            if image not in stages:
                images.append(image)
            if len(parts) >= 3 and parts[1].upper() == "AS":
                stages.add(parts[2])
    return images


def final_stage(path: Path) -> list[tuple[str, str]]:
    steps = instructions(path)
    last_from = max(i for i, (name, _) in enumerate(steps) if name == "FROM")
    return steps[last_from:]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_pinned(path: Path) -> None:
    images = base_images(path)
    assert images
    for image in images:
        assert "$" not in image, f"{image}: an ARG without a default"
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag, f"{image} has no tag"
        assert tag != "latest" and re.search(r"\d+\.\d+", tag), f"{image}: pin a versioned tag, not {tag!r}"


def test_cuda_image_uses_one_cuda_version_for_build_and_runtime() -> None:
    images = base_images(REPO / "docker" / "Dockerfile.cuda")
    assert len(images) == 2 and "devel" in images[0] and "runtime" in images[1]
    version = lambda image: re.search(r":(\d+\.\d+)\.\d+-", image).group(1)  # noqa: E731
    assert version(images[0]) == version(images[1])
    text = (REPO / "docker" / "Dockerfile.cuda").read_text(encoding="utf-8")
    torch_cuda = re.search(r"ARG TORCH_CUDA=cu(\d+)", text).group(1)
    assert torch_cuda == version(images[0]).replace(".", ""), "the torch wheel index must match the CUDA base image"
    for package in ("faiss-gpu-cu12", "deepspeed", ".[gpu"):
        assert package in text


def deepspeed_build_env() -> dict[str, str]:
    """The variables Dockerfile.cuda sets inline on the command that installs DeepSpeed with prebuilt ops."""
    defaults: dict[str, str] = {}
    for name, args in instructions(REPO / "docker" / "Dockerfile.cuda"):
        if name == "ARG" and "=" in args:
            key, value = args.split("=", 1)
            defaults.setdefault(key.strip(), value.strip().strip('"'))
        if name != "RUN" or "DS_BUILD_" not in args:
            continue
        for command in args.split("&&"):
            words = shlex.split(resolve_args(command, defaults))
            if "install" in words and any(w.startswith("deepspeed") for w in words):
                assignments = [w for w in words[: words.index("install")] if re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", w)]
                return dict(w.split("=", 1) for w in assignments)
    raise AssertionError("Dockerfile.cuda installs no DeepSpeed with DS_BUILD_* ops")


def test_cuda_image_prebuilds_the_cuda_deepspeed_ops() -> None:
    """`docker build` sees no GPU; DeepSpeed's op builders, chosen under the build's variables, must be the CUDA ones."""
    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed")
    build_env = deepspeed_build_env()
    assert any(key.startswith("DS_BUILD_") and value == "1" for key, value in build_env.items()), build_env
    probe = ("from deepspeed.ops.op_builder.all_ops import ALL_OPS, accelerator_name\n"
             "print('@@', accelerator_name, type(ALL_OPS['fused_adam']).__module__)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DS_")}
    env.update(build_env, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    accelerator, module = [line for line in proc.stdout.splitlines() if line.startswith("@@")][-1].split()[1:]
    assert accelerator == "cuda" and ".cpu." not in module, f"the image would prebuild {module} for {accelerator}"


def test_cpu_image_installs_cpu_torch() -> None:
    text = (REPO / "docker" / "Dockerfile.cpu").read_text(encoding="utf-8")
    assert "python:3.11" in base_images(REPO / "docker" / "Dockerfile.cpu")[0]
    assert re.search(r"TORCH_VERSION=2\.13\.0", text)
    assert "download.pytorch.org/whl/cpu" in text


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_runtime_stage_runs_bookmatch_as_a_user(path: Path) -> None:
    steps = final_stage(path)
    users = [args for name, args in steps if name == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the final stage must switch to a non-root USER"
    entrypoints = [args for name, args in steps if name == "ENTRYPOINT"]
    assert entrypoints and json.loads(entrypoints[-1]) == ["bookmatch"]
    env_text = " ".join(args for name, args in steps if name == "ENV")
    assert re.search(r"\bHF_HOME=/vol/hf\b", env_text)
    assert "HF_HUB_OFFLINE" not in env_text, "HF_HUB_OFFLINE must not be forced in the image"
    copied = " ".join(args for name, args in steps if name == "COPY")
    assert "configs" in copied and "launch_accelerate.sh" in copied, "the SkyPilot tasks call these from the image"


def _pattern_regex(pattern: str) -> re.Pattern:
    """Docker's .dockerignore matching: `*` and `?` stay within one path segment, `**` spans segments."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps `path` (relative, with slashes) out of the build context.

    A path is out when the last pattern matching it or one of its parent folders is not a `!` exception.
    """
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        regex = _pattern_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


@pytest.mark.parametrize(
    "path",
    [".git/config", ".venv-sky/bin/python", ".venv/lib/x.py", "venv/bin/python", "data/raw/book.txt",
     "artifacts/run/model.safetensors", "models/teacher/config.json", "runs/x/log.txt", "shared/corpus/books/a.txt",
     "bookmatch/__pycache__/x.pyc", ".pytest_cache/v/cache", "out/checkpoint-100/optimizer.bin"],
)
def test_dockerignore_keeps_heavy_things_out(path: str) -> None:
    assert dockerignore_excludes(path)


@pytest.mark.parametrize("path", ["pyproject.toml", "README.md", "bookmatch/models/bi_encoder.py", "bookmatch/cli/train.py",
                                  "configs/accelerate/multi_gpu.yaml", "scripts/launch_accelerate.sh"])
def test_dockerignore_keeps_what_the_images_copy(path: str) -> None:
    assert not dockerignore_excludes(path)


def test_smoke_script_parses_and_documents_itself() -> None:
    script = REPO / "scripts" / "docker_smoke.sh"
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = script.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
    for needed in ("docker build", "Dockerfile.cpu", "Dockerfile.cuda", "--gpus all", "nvidia-smi", ":/input", ":/vol"):
        assert needed in text, needed
    usage = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True)
    assert usage.returncode == 0 and "--gpu" in usage.stdout


# `docker` for the smoke script without a Docker engine: `build` does nothing and `run` runs the image's entrypoint
# (`bookmatch`) here, with the -v mounts mapped back to their host folders and the image's HF_HOME=/vol/hf.
FAKE_DOCKER = """
import os, shlex, sys
args = sys.argv[1:]
if args[:1] == ["build"]:
    sys.exit(0)
if args[:1] != ["run"]:
    sys.exit(f"fake docker: {args[:1]} is not simulated")
mounts, env, i = [], dict(os.environ), 1
while args[i].startswith("-"):
    if args[i] == "--rm":
        i += 1
    elif args[i] == "-v":
        host, container = args[i + 1].split(":")[:2]
        mounts.append((container, host))
        i += 2
    elif args[i] == "-e":
        key, value = args[i + 1].split("=", 1)
        env[key] = value
        i += 2
    else:
        sys.exit(f"fake docker: option {args[i]} is not simulated")
def on_host(arg):
    for container, host in mounts:
        if arg == container or arg.startswith(container + "/"):
            return host + arg[len(container):]
    return arg
command = [on_host(a) for a in args[i + 1:]]
if command[:1] == ["pipeline"]:
    command += shlex.split(os.environ.get("SMOKE_PIPELINE_ARGS", ""))
env["HF_HOME"] = on_host("/vol/hf")
os.execve(sys.executable, [sys.executable, "-m", "bookmatch", *command], env)
"""


def test_smoke_script_cpu_run_passes_on_a_working_image(tmp_path: Path, corpus_dir: Path, tiny_encoder_dir: Path) -> None:
    """The CPU smoke run end to end on the script's own book choice and pipeline options; only the backbone and
    the step counts are made tiny (split ratios, held-out authors and the checked outputs are the script's)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(f"#!{sys.executable}\n{FAKE_DOCKER}", encoding="utf-8")
    docker.chmod(0o755)
    tiny = {"contrastive.model": str(tiny_encoder_dir), "contrastive.max_steps": "2", "contrastive.eval_steps": "2",
            "contrastive.save_steps": "2", "contrastive.sample": "0", "contrastive.max_seq_length": "64",
            "prepare.hard_negatives": "false", "prepare.max_chunks_per_book": "12"}
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", TMPDIR=str(tmp_path),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               SMOKE_PIPELINE_ARGS=shlex.join(a for k, v in tiny.items() for a in ("--set", f"{k}={v}")))
    proc = subprocess.run(["bash", str(REPO / "scripts" / "docker_smoke.sh"), "--books", str(corpus_dir / "books")],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-4000:]}"
    assert "smoke test passed" in proc.stdout
