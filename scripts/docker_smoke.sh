#!/usr/bin/env bash
# Smoke-test the Docker images on a machine with a Docker engine.
#
#   scripts/docker_smoke.sh [--gpu] [--books DIR] [--num-books N] [--tag TAG] [--keep]
#
# Default (CPU): builds docker/Dockerfile.cpu, copies the N smallest books (default 12, two per author)
# from DIR (default ../shared/corpus/books) into a temp folder mounted read-only at /input, mounts an empty
# temp folder at /vol (artifacts, HF_HOME=/vol/hf), and runs the whole `cpu-small` pipeline inside the image
# as its non-root user; then checks that the report and the calibrated model exist.
# --gpu: builds docker/Dockerfile.cuda instead, runs `nvidia-smi` and a CUDA check in the container with
#        `docker run --gpus all`, then prepares the tiny corpus and runs a short contrastive training step on
#        the GPU (a few optimizer steps with the packaged MiniLM backbone).
# --keep: leave the temp folders (their path is printed) instead of removing them.
# Exit status 0 means every step passed. Run it from anywhere; it builds from the project root.
set -euo pipefail

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
gpu=0
books="$root/../shared/corpus/books"
num_books=12
tag="smoke"
keep=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --gpu) gpu=1; shift ;;
        --books) books="$2"; shift 2 ;;
        --num-books) num_books="$2"; shift 2 ;;
        --tag) tag="$2"; shift 2 ;;
        --keep) keep=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "docker_smoke.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

command -v docker >/dev/null || { echo "docker_smoke.sh: docker is not installed or not on PATH" >&2; exit 2; }
[[ -d "$books" ]] || { echo "docker_smoke.sh: books folder $books not found (pass --books DIR)" >&2; exit 2; }

if (( gpu )); then
    flavour=cuda
else
    flavour=cpu
fi
image="bookmatch:${tag}-${flavour}"
work="$(mktemp -d "${TMPDIR:-/tmp}/bookmatch-smoke.XXXXXX")"
cleanup() { if (( keep )); then echo "kept $work"; else rm -rf "$work"; fi; }
trap cleanup EXIT
mkdir -p "$work/input/books" "$work/vol"
# The container's user (uid 10001) writes the artifacts; the input stays read-only.
chmod 0777 "$work/vol"

step() { printf '\n== %s\n' "$*"; }

step "build $image from docker/Dockerfile.$flavour"
docker build -f "$root/docker/Dockerfile.$flavour" -t "$image" "$root"

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

run=(docker run --rm -v "$work/input:/input:ro" -v "$work/vol:/vol")
if (( gpu )); then
    run+=(--gpus all --shm-size 8g)
fi

step "the entrypoint answers"
"${run[@]}" "$image" --version

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
else
    step "the cpu-small pipeline on the tiny corpus"
    # At the preset's 0.8/0.1 split ratios a dozen books (two authors of which cpu-small holds out to test)
    # leave one book in validation, with no different-book pair to calibrate on.
    "${run[@]}" -e HF_HUB_OFFLINE=1 "$image" pipeline --books /input/books --out /vol/run --preset cpu-small \
        --set prepare.train_ratio=0.5 --set prepare.val_ratio=0.25
    for needed in reports/test/metrics.json reports/test/report.md models/book_matcher_contrastive/calibration.json; do
        test -s "$work/vol/run/$needed" || { echo "missing /vol/run/$needed" >&2; exit 1; }
    done
fi

step "smoke test passed ($image)"
