#!/usr/bin/env bash
# Test a checkpoint with N processes on this node (or several nodes) through torchrun.
#   bash tools/dist_test.sh CONFIG CHECKPOINT N [test.py args...]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and PORT on every node;
# PYTHON selects the interpreter (default: python).  See tools/dist_run.sh.

exec bash "$(dirname "$0")/dist_run.sh" test.py "$3" "$1" "$2" --launcher pytorch \
    "${@:4}"
