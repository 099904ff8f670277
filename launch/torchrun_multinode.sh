#!/usr/bin/env bash
# torchrun on several nodes: run this on every node with NODE_RANK set (0 on the head node).
#   HEAD_ADDR=10.0.0.1 NNODES=2 NPROC=8 NODE_RANK=0 launch/torchrun_multinode.sh --global-bs 8192
set -euo pipefail
exec torchrun --nnodes "${NNODES:-2}" --node_rank "${NODE_RANK:?set NODE_RANK}" \
    --nproc_per_node "${NPROC:-8}" --master_addr "${HEAD_ADDR:?set HEAD_ADDR}" --master_port "${PORT:-29500}" \
    "$(dirname "$0")/../scaling/run.py" "$@"
