#!/usr/bin/env bash
# Run a tools/ script with N processes per node through torchrun: the
# launcher behind dist_train.sh and dist_test.sh.
#   bash tools/dist_run.sh SCRIPT N [script args...]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and PORT on every node;
# PYTHON selects the interpreter (default: python).
# Without CUDA the processes use gloo on the CPU (dsvlm/engine/compat.py).

TOOLS=$(dirname "$0")
SCRIPT=$1
GPUS=$2

export PYTHONPATH="$TOOLS/..":$PYTHONPATH
exec "${PYTHON:-python}" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" \
    --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --nproc_per_node="$GPUS" \
    --master_port="${PORT:-29500}" \
    "$TOOLS/$SCRIPT" \
    "${@:3}"
