"""Checkpoints that hold the trainable weights only.

A 7B run with a frozen LLM or LoRA saves megabytes, not 14 GB: frozen weights
come back from the ``pretrained`` directories when the model is built, so a
checkpoint only needs what training changed.

Every checkpoint is read safely (``dsvlm.utils.safe_load``): tensors and an
allow-list of training-state types, never code; a truncated or malformed
file is an error naming it.
"""
import os
from typing import Dict, Iterable

import torch
from mmengine.logging import print_log
from torch import nn

from dsvlm.utils.safe_load import CheckpointLoadError, load_checkpoint_file


def trainable_names(model: nn.Module) -> set:
    return {n for n, p in model.named_parameters(remove_duplicate=False)
            if p.requires_grad}


def training_state_names(model: nn.Module) -> set:
    """Buffers that trainable-only checkpoints keep too: those of modules
    that say ``keep_in_checkpoints`` (e.g. a supervisor's noise position)."""
    return {f'{prefix}.{name}' if prefix else name
            for prefix, module in model.named_modules()
            if getattr(module, 'keep_in_checkpoints', False)
            for name, _ in module.named_buffers(recurse=False)}


def keep_trainable(state_dict: Dict[str, torch.Tensor],
                   names: Iterable[str]) -> Dict[str, torch.Tensor]:
    names = set(names)
    for key in list(state_dict):
        if key not in names:
            del state_dict[key]
    return state_dict


TRAINING_ONLY_PREFIX = 'supervisors.'


def ignore_expected_mismatches(module: nn.Module, incompatible_keys) -> None:
    """A ``load_state_dict`` post-hook for trainable-only checkpoints.

    Frozen parameters (and the training state of checkpoints written before
    it was saved) are expected to be absent (trainable ones are still
    reported missing), and a model built for inference, without
    supervisors, expects the training-only ``supervisors.*`` weights of a
    training checkpoint and ignores them.
    """
    frozen = {n for n, p in module.named_parameters(remove_duplicate=False)
              if not p.requires_grad}
    frozen |= training_state_names(module)  # absent from older checkpoints
    missing = incompatible_keys.missing_keys
    missing[:] = [k for k in missing if k not in frozen]
    if not len(getattr(module, 'supervisors', ())):
        unexpected = incompatible_keys.unexpected_keys
        unexpected[:] = [k for k in unexpected
                         if not k.startswith(TRAINING_ONLY_PREFIX)]


def inference_state_dict(state_dict: Dict[str, torch.Tensor]
                         ) -> Dict[str, torch.Tensor]:
    """The weights inference needs: everything but the supervisors."""
    return {k: v for k, v in state_dict.items()
            if not k.startswith(TRAINING_ONLY_PREFIX)}


def checkpoint_format(path: str) -> str:
    """``'plain'`` (a ``.pth`` file), ``'deepspeed'`` (a DeepSpeed
    checkpoint directory), ``'dcp'`` (a torch.distributed.checkpoint
    directory, written by FSDP2Strategy) or ``'work_dir'``."""
    if os.path.isfile(path):
        return 'plain'
    if not os.path.isdir(path):
        raise FileNotFoundError(f'no checkpoint at {path!r}')
    names = os.listdir(path)
    if 'last_checkpoint' in names:
        return 'work_dir'
    if '.metadata' in names:
        return 'dcp'
    if any(n.endswith('model_states.pt') for n in names):
        return 'deepspeed'
    raise ValueError(
        f'{path!r} is a directory but neither a checkpoint (a DeepSpeed '
        '`*model_states.pt` or a torch.distributed.checkpoint `.metadata` '
        'is missing) nor a work_dir (no `last_checkpoint` file)')


def resolve_checkpoint_path(path: str) -> str:
    """A checkpoint (file or sharded directory), or a work_dir whose
    ``last_checkpoint`` file names the newest checkpoint (MMEngine writes it
    at every save)."""
    path = os.path.expanduser(str(path))
    if os.path.isdir(path) and checkpoint_format(path) == 'work_dir':
        pointer = os.path.join(path, 'last_checkpoint')
        with open(pointer) as f:
            path = f.read().strip()
        if not os.path.exists(path):
            raise FileNotFoundError(
                f'no checkpoint at {path!r}, which {pointer} names')
    if not os.path.exists(path):
        raise FileNotFoundError(f'no checkpoint at {path!r}')
    return path


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The model weights of a checkpoint in any format the strategies
    write (a plain ``.pth``, a DeepSpeed or an FSDP2 directory, or a
    work_dir's newest) or a ``.safetensors`` file, as one plain state dict
    on the CPU.  A sharded checkpoint is read without a process group, on
    any number of processes it was written with.  Files are read with
    ``weights_only=True`` and an allow-list of training-state types
    (:mod:`dsvlm.utils.safe_load`): a crafted pickle raises
    ``UnsafeCheckpointError``, a truncated file ``CheckpointLoadError``,
    both naming the file."""
    path = resolve_checkpoint_path(path)
    fmt = checkpoint_format(path)
    if fmt == 'deepspeed':
        from dsvlm.engine.strategies.deepspeed_zero import \
            deepspeed_checkpoint_to_state_dict
        return deepspeed_checkpoint_to_state_dict(path)
    if fmt == 'dcp':
        from dsvlm.engine.strategies.fsdp2 import \
            fsdp2_checkpoint_to_state_dict
        return fsdp2_checkpoint_to_state_dict(path)
    checkpoint = load_checkpoint_file(path, map_location='cpu')
    state = checkpoint.get('state_dict', checkpoint) \
        if isinstance(checkpoint, dict) else checkpoint
    if not isinstance(state, dict) or not all(
            isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointLoadError(
            f'{path} is not a state dict (nor a checkpoint with a '
            f'`state_dict` of tensors): it holds a {type(state).__name__}')
    return state


def load_pretrained_pth(model: nn.Module, path: str) -> list:
    """Load the weights of ``path`` that the model has (e.g. the stage-1
    connector into a stage-2 model).  ``path`` is any checkpoint
    :func:`read_state_dict` reads, so stage 2 may start from a stage 1 that
    ran under another strategy or number of processes.  Returns the loaded
    keys; fails if the checkpoint shares no key with the model or a shape
    differs."""
    path = resolve_checkpoint_path(path)
    state = read_state_dict(path)
    own = dict(model.named_parameters())
    loaded = [k for k in state if k in own]
    if not loaded:
        raise ValueError(f'pretrained_pth {path!r} shares no weight with the '
                         f'model; its first keys: {list(state)[:5]}')
    for key in loaded:
        shape = tuple(getattr(own[key], 'ds_shape', own[key].shape))
        if shape != tuple(state[key].shape):
            raise ValueError(
                f'pretrained_pth {path!r}: {key} has shape '
                f'{tuple(state[key].shape)}, the model has {shape}')
        copy_into_parameter(own[key], state[key])
    print_log(f'Loaded {len(loaded)} tensors from {path}: '
              f'{sorted({k.split(".")[0] for k in loaded})}', logger='current')
    return loaded


@torch.no_grad()
def copy_into_parameter(param: nn.Parameter, value: torch.Tensor) -> None:
    """``param.copy_(value)``, also for a parameter that DeepSpeed ZeRO-3
    partitioned when transformers built the model under ``zero.Init`` (its
    local data is then a shard): gathered, written, partitioned again."""
    if not hasattr(param, 'ds_id'):
        param.copy_(value)
        return
    import deepspeed
    with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
        if torch.distributed.get_rank() == 0:
            param.copy_(value)
