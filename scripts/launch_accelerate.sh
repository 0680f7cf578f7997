#!/usr/bin/env bash
# Launch a `bookmatch` command under `accelerate launch` on every node of a SkyPilot cluster.
#
#   scripts/launch_accelerate.sh [--deepspeed | --zero3] [--dry-run] -- train contrastive --data D --model M --out O
#
# The topology comes from the environment SkyPilot sets on each node: SKYPILOT_NUM_NODES,
# SKYPILOT_NODE_RANK, SKYPILOT_NODE_IPS (one IP per line; the first is the rendezvous host) and
# SKYPILOT_NUM_GPUS_PER_NODE. Every node runs this same line; torch's static rendezvous on
# MAIN_PROCESS_PORT (default 29500) joins them, so no SSH or pdsh between nodes is needed
# (DeepSpeed uses accelerate's `standard` multinode launcher for the same reason).
# With no GPU (SKYPILOT_NUM_GPUS_PER_NODE=0 or unset) it runs one CPU process: the local test path.
#
# --deepspeed  use configs/accelerate/deepspeed_zero2.yaml (+ configs/deepspeed/zero2.json) instead of
#              configs/accelerate/multi_gpu.yaml
# --zero3      DeepSpeed ZeRO stage 3 (weights sharded too): configs/accelerate/deepspeed_zero3.yaml + zero3.json
# --dry-run    print the command, one argument per line, instead of running it
# Config files are looked up under BOOKMATCH_HOME (default: the folder above this script; /opt/bookmatch
# in the Docker images).
set -euo pipefail

usage() {
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

use_deepspeed=0
zero_stage=2
dry_run=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --deepspeed) use_deepspeed=1; shift ;;
        --zero3) use_deepspeed=1; zero_stage=3; shift ;;
        --dry-run) dry_run=1; shift ;;
        --) shift; break ;;
        -h|--help) usage ;;
        *) break ;;
    esac
done
[[ $# -gt 0 ]] || { echo "launch_accelerate.sh: no bookmatch command given (e.g. -- train contrastive ...)" >&2; exit 2; }

home="${BOOKMATCH_HOME:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
num_nodes="${SKYPILOT_NUM_NODES:-1}"
node_rank="${SKYPILOT_NODE_RANK:-0}"
gpus_per_node="${SKYPILOT_NUM_GPUS_PER_NODE:-0}"
# SKYPILOT_NODE_IPS is newline-separated; the head node (rank 0) is listed first.
main_ip="$(printf '%s\n' "${SKYPILOT_NODE_IPS:-127.0.0.1}" | head -n 1 | tr -d '[:space:]')"
main_ip="${main_ip:-127.0.0.1}"
main_port="${MAIN_PROCESS_PORT:-29500}"

for name in num_nodes node_rank gpus_per_node main_port; do
    if ! [[ "${!name}" =~ ^[0-9]+$ ]]; then
        echo "launch_accelerate.sh: $name must be a whole number, got '${!name}'" >&2
        exit 2
    fi
done
if (( node_rank >= num_nodes )); then
    echo "launch_accelerate.sh: node rank $node_rank is out of range for $num_nodes node(s)" >&2
    exit 2
fi

if (( gpus_per_node == 0 )); then
    if (( num_nodes > 1 )); then
        echo "launch_accelerate.sh: $num_nodes nodes but no GPUs per node; CPU runs are single-node" >&2
        exit 2
    fi
    cmd=(accelerate launch --cpu --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no)
else
    if (( use_deepspeed )); then
        config_file="$home/configs/accelerate/deepspeed_zero${zero_stage}.yaml"
    else
        config_file="$home/configs/accelerate/multi_gpu.yaml"
    fi
    if [[ ! -f "$config_file" ]] && (( ! dry_run )); then
        echo "launch_accelerate.sh: accelerate config $config_file not found (set BOOKMATCH_HOME to the project folder)" >&2
        exit 2
    fi
    cmd=(accelerate launch --config_file "$config_file"
         --num_machines "$num_nodes"
         --machine_rank "$node_rank"
         --main_process_ip "$main_ip"
         --main_process_port "$main_port"
         --num_processes "$((num_nodes * gpus_per_node))")
    if (( use_deepspeed )); then
        # The accelerate config names its DeepSpeed JSON relative to the project folder; SkyPilot runs
        # commands elsewhere (~/sky_workdir), so the launcher passes the absolute path.
        cmd+=(--use_deepspeed --deepspeed_multinode_launcher standard
              --deepspeed_config_file "$home/configs/deepspeed/zero${zero_stage}.json")
    fi
fi
cmd+=(-m bookmatch "$@")

if (( dry_run )); then
    printf '%s\n' "${cmd[@]}"
    exit 0
fi
exec "${cmd[@]}"
