# Sourced by scripts/docker_smoke.sh and scripts/container_base.sh: which container engine to drive.
#
# pick_engine [NAME]: prints NAME when given (docker or podman, checked to be installed), else the first engine
# that answers: docker when its daemon is reachable, else podman. A docker client without a daemon (common in
# CI sandboxes) does not count. Returns 2 with a one-line reason when none can be used.
pick_engine() {
    local wanted="${1:-}"
    if [[ -n "$wanted" ]]; then
        case "$wanted" in
            docker|podman) ;;
            *) echo "${0##*/}: unknown engine '$wanted' (docker or podman)" >&2; return 2 ;;
        esac
        command -v "$wanted" >/dev/null || { echo "${0##*/}: $wanted is not installed or not on PATH" >&2; return 2; }
        echo "$wanted"
        return 0
    fi
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
        echo docker
    elif command -v podman >/dev/null; then
        echo podman
    elif command -v docker >/dev/null; then
        echo "${0##*/}: docker is installed but its daemon does not answer (docker info)," \
            "and podman is not installed" >&2
        return 2
    else
        echo "${0##*/}: neither docker nor podman is installed" >&2
        return 2
    fi
}
