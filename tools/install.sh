#!/usr/bin/env bash
# Install dsvlm and its tested dependency set into the current Python.
#
#   bash tools/install.sh [--no-deepspeed]
#
# 1. torch==2.13.0, unless a torch is already importable (e.g. your CUDA
#    build); either way that torch is pinned so nothing replaces it;
# 2. dsvlm in editable mode with the test extras and deepspeed (the ZeRO
#    strategies; --no-deepspeed leaves it out, and its tests are skipped);
# 3. lpips==0.1.4 without its dependencies (they would pull torchvision and,
#    with it, another torch);
# 4. llava-torch==1.2.2.post1 (the official LLaVA code) without its
#    dependencies (pinned torch/transformers): a test-only reference.
# PYTHON selects the interpreter (default: python).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
TORCH_VERSION=2.13.0
EXTRAS=tests,deepspeed

for arg in "$@"; do
    case $arg in
        --with-deepspeed) EXTRAS=tests,deepspeed ;;  # the default
        --no-deepspeed) EXTRAS=tests ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg (valid: --no-deepspeed)" >&2; exit 2 ;;
    esac
done

if installed=$("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null); then
    echo "Using the installed torch $installed"
    if [ "${installed%%+*}" != "$TORCH_VERSION" ]; then
        echo "warning: dsvlm is tested with torch $TORCH_VERSION" >&2
    fi
else
    "$PYTHON" -m pip install "torch==$TORCH_VERSION"
    installed=$("$PYTHON" -c 'import torch; print(torch.__version__)')
fi

constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
grep -v '^torch==' requirements/constraints.txt > "$constraints"
echo "torch==${installed%%+*}" >> "$constraints"

"$PYTHON" -m pip install -c "$constraints" -e ".[$EXTRAS]"
"$PYTHON" -m pip install --no-deps lpips==0.1.4
# Test-only reference, never imported by dsvlm: the official LLaVA prompt
# code that tests/llava_reference.py loads file by file (tests that need it
# skip without it). Its dependencies would replace torch and transformers.
"$PYTHON" -m pip install --no-deps llava-torch==1.2.2.post1
if [ "$EXTRAS" = tests,deepspeed ]; then
    # DeepSpeed compiles its CPU communication op on first use (about a
    # minute); do it here rather than in the first training run
    "$PYTHON" - <<'PY'
import torch
if not torch.cuda.is_available():
    from deepspeed.accelerator import get_accelerator
    get_accelerator().create_op_builder('ShareMemCommBuilder').load()
PY
fi
"$PYTHON" - <<'PY'
import torch, mmengine, transformers
print(f'dsvlm installed: torch {torch.__version__}, mmengine '
      f'{mmengine.__version__}, transformers {transformers.__version__}')
PY
