"""Turn a checkpoint of any strategy into dsvlm's plain checkpoint.

    python tools/convert_checkpoint.py SRC OUT.pth [--inference]

SRC is a DeepSpeed checkpoint directory (``iter_N.pth/`` of a ZeRO-2/3
run), an FSDP2 ``torch.distributed.checkpoint`` directory, a work_dir (its
newest checkpoint) or a plain ``.pth``.  Sharded checkpoints are read in
one process without GPUs, whatever number of processes wrote them.  OUT
holds ``state_dict`` with the trainable weights under the model's own names
(what ``tools/test.py``, stage 2's ``model.pretrained_pth`` and the export
read); ``--inference`` leaves out the training-only supervisor weights.
OUT is written to a temporary file first and then renamed, so an existing
OUT is never left half-written.
"""
import argparse
import os
import os.path as osp
import sys
import time

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from dsvlm.models.checkpoint import (checkpoint_format,  # noqa: E402
                                     inference_state_dict, read_state_dict,
                                     resolve_checkpoint_path)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Convert a DeepSpeed / FSDP2 checkpoint into a plain '
        'trainable-only checkpoint')
    parser.add_argument('src', help='checkpoint directory, work_dir or .pth')
    parser.add_argument('out', help='the plain checkpoint to write (.pth)')
    parser.add_argument('--inference', action='store_true',
                        help='drop the training-only supervisor weights')
    return parser.parse_args(argv)


def save_atomically(obj, path: str) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename."""
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = osp.join(folder, f'.{osp.basename(path)}.tmp{os.getpid()}')
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def convert(src: str, out: str, inference: bool = False) -> dict:
    path = resolve_checkpoint_path(src)
    state = read_state_dict(path)
    if inference:
        state = inference_state_dict(state)
    state = {k: v.detach().cpu() for k, v in state.items()}
    meta = dict(converted_from=osp.abspath(path),
                source_format=checkpoint_format(path),
                time=time.strftime('%Y%m%d_%H%M%S'))
    save_atomically(dict(state_dict=state, meta=meta), out)
    return state


def main(argv=None):
    args = parse_args(argv)
    state = convert(args.src, args.out, args.inference)
    numel = sum(v.numel() for v in state.values())
    print(f'{args.out}: {len(state)} tensors, {numel:,} values '
          f'(from {resolve_checkpoint_path(args.src)})')


if __name__ == '__main__':
    main()
