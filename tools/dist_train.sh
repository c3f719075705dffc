#!/usr/bin/env bash
# Train with N processes on this node (or several nodes) through torchrun.
#   bash tools/dist_train.sh CONFIG N [train.py args...]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and PORT on every node;
# PYTHON selects the interpreter (default: python).  See tools/dist_run.sh.

exec bash "$(dirname "$0")/dist_run.sh" train.py "$2" "$1" --launcher pytorch "${@:3}"
