#!/usr/bin/env bash
# Train on a Slurm cluster, one task per GPU, on one node or several.
#   [GPUS=16] [GPUS_PER_NODE=8] bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG [WORK_DIR] [train.py args...]
# e.g. GPUS=16 bash tools/slurm_train.sh gpu dsvlm configs/dsvlm/siglip_vicuna7b.py --strategy deepspeed_zero3
# GPUS is the total number of processes (2 nodes x 8 = 16); Slurm places
# them and sets the rank variables that `--launcher slurm` reads.  The
# global batch of the config is kept whatever GPUS is.

set -euo pipefail

PARTITION=$1
JOB_NAME=$2
CONFIG=$3
shift 3
ARGS=()
if [ $# -gt 0 ] && [[ $1 != -* ]]; then  # an optional WORK_DIR
    ARGS+=(--work-dir="$1")
    shift
fi
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-$(( GPUS < 8 ? GPUS : 8 ))}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
read -r -a SRUN_ARGS <<< "${SRUN_ARGS:-}"

export PYTHONPATH="$(dirname "$0")/..":${PYTHONPATH:-}
set -x
srun -p "$PARTITION" \
    --job-name="$JOB_NAME" \
    --gres=gpu:"$GPUS_PER_NODE" \
    --ntasks="$GPUS" \
    --ntasks-per-node="$GPUS_PER_NODE" \
    --cpus-per-task="$CPUS_PER_TASK" \
    --kill-on-bad-exit=1 \
    "${SRUN_ARGS[@]}" \
    "${PYTHON:-python}" -u "$(dirname "$0")/train.py" "$CONFIG" \
    --launcher=slurm "${ARGS[@]}" "$@"
