#!/usr/bin/env bash
# Build the CPU image's base image from Debian's packages, for a machine that reaches no image registry.
#
#   scripts/container_base.sh [--engine docker|podman] [--mirror URL] [--tag IMAGE] [--force]
#
# docker/Dockerfile.cpu starts FROM python:3.11.x-slim-bookworm (its PYTHON_IMAGE default). Where that image
# cannot be pulled (no registry reachable, only Debian's apt mirror), this script makes a stand-in: a minimal
# Debian bookworm (debootstrap, needs root) with python3.11, venv, pip's certificates and `python` on PATH,
# imported into the engine under the exact name the Dockerfile expects. The Dockerfile then builds unmodified
# with `--pull=never`. Debian's python lives in /usr/bin instead of the official image's /usr/local/bin; the
# Dockerfile only ever calls `python` on PATH, so nothing else differs for it.
# --engine: docker or podman (default: whichever answers; podman where docker has no daemon).
# --mirror: the Debian mirror (default: debootstrap's own, the public Debian mirror).
# --tag:    the name to give the image (default: the Dockerfile's PYTHON_IMAGE default).
# --force:  rebuild even when an image of that name exists already.
# Needs: root, debootstrap (apt-get install debootstrap), ~400 MB in $TMPDIR; ~3-6 minutes.
set -euo pipefail

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
engine=""
mirror=""  # empty: debootstrap's default Debian mirror
tag=""
force=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --engine) engine="$2"; shift 2 ;;
        --mirror) mirror="$2"; shift 2 ;;
        --tag) tag="$2"; shift 2 ;;
        --force) force=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "container_base.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

# shellcheck source=scripts/container_engine.sh
source "$root/scripts/container_engine.sh"
engine="$(pick_engine "$engine")" || exit 2

if [[ -z "$tag" ]]; then
    tag="$(sed -n 's/^ARG PYTHON_IMAGE=//p' "$root/docker/Dockerfile.cpu" | head -n 1)"
    [[ -n "$tag" ]] || { echo "container_base.sh: no ARG PYTHON_IMAGE=... in docker/Dockerfile.cpu" >&2; exit 2; }
fi
# docker and podman both store a short name under docker.io/library/; import it under the full name so that
# `FROM python:...` resolves to it with --pull=never.
first="${tag%%/*}"
if [[ "$tag" != */* ]]; then
    full_tag="docker.io/library/$tag"
elif [[ "$first" == *.* || "$first" == *:* || "$first" == localhost ]]; then
    full_tag="$tag"  # names its registry already
else
    full_tag="docker.io/$tag"
fi

if (( ! force )) && "$engine" image inspect "$full_tag" >/dev/null 2>&1; then
    echo "container_base.sh: $full_tag exists already (pass --force to rebuild)"
    exit 0
fi
[[ $(id -u) == 0 ]] || { echo "container_base.sh: debootstrap needs root" >&2; exit 2; }
command -v debootstrap >/dev/null || { echo "container_base.sh: debootstrap is not installed" >&2; exit 2; }

rootfs="$(mktemp -d "${TMPDIR:-/tmp}/bookmatch-base.XXXXXX")"
trap 'rm -rf "$rootfs"' EXIT
echo "== debootstrap bookworm${mirror:+ from $mirror} into $rootfs"
# python3-venv brings ensurepip (the Dockerfile makes a venv); python-is-python3 gives `python`.
debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    bookworm "$rootfs" ${mirror:+"$mirror"}
# Keep the image as small as the official slim one: no apt lists, caches or docs.
chroot "$rootfs" apt-get clean
# Like Debian's official images: apt keeps no .deb files and no package caches in the layers built on top.
cat > "$rootfs/etc/apt/apt.conf.d/docker-clean" <<'CONF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
CONF
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/tmp/* "$rootfs"/root/.cache
echo "== import as $full_tag"
tar -C "$rootfs" --numeric-owner -c . | "$engine" import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' - "$full_tag"
"$engine" run --rm --pull=never "$full_tag" python -c "import sys, ssl, venv; print('base ok', sys.version.split()[0])"
