"""Checkpoints that hold the trainable weights only.

A 7B run with a frozen LLM or LoRA saves megabytes, not 14 GB: frozen weights
come back from the ``pretrained`` directories when the model is built, so a
checkpoint only needs what training changed.
"""
import os
from typing import Dict, Iterable

import torch
from mmengine.logging import print_log
from mmengine.runner.checkpoint import _load_checkpoint
from torch import nn


def trainable_names(model: nn.Module) -> set:
    return {n for n, p in model.named_parameters(remove_duplicate=False)
            if p.requires_grad}


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

    Frozen parameters are expected to be absent (trainable ones are still
    reported missing), and a model built for inference, without
    supervisors, expects the training-only ``supervisors.*`` weights of a
    training checkpoint and ignores them.
    """
    frozen = {n for n, p in module.named_parameters(remove_duplicate=False)
              if not p.requires_grad}
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


def resolve_checkpoint_path(path: str) -> str:
    """A checkpoint file, or a work_dir whose ``last_checkpoint`` file names
    the newest checkpoint (MMEngine writes it at every save)."""
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        pointer = os.path.join(path, 'last_checkpoint')
        if not os.path.isfile(pointer):
            raise FileNotFoundError(
                f'pretrained_pth={path!r} is a directory without a '
                '`last_checkpoint` file: point it at a checkpoint file or at '
                'the work_dir of a finished run.')
        with open(pointer) as f:
            path = f.read().strip()
    if not os.path.isfile(path):
        raise FileNotFoundError(f'pretrained_pth: no checkpoint at {path!r}')
    return path


def load_pretrained_pth(model: nn.Module, path: str) -> list:
    """Load the weights of ``path`` that the model has (e.g. the stage-1
    connector into a stage-2 model).  Returns the loaded keys; fails if the
    checkpoint shares no key with the model or a shape differs."""
    path = resolve_checkpoint_path(path)
    checkpoint = _load_checkpoint(path, map_location='cpu')
    state = checkpoint.get('state_dict', checkpoint)
    own = dict(model.named_parameters())
    loaded = [k for k in state if k in own]
    if not loaded:
        raise ValueError(f'pretrained_pth {path!r} shares no weight with the '
                         f'model; its first keys: {list(state)[:5]}')
    with torch.no_grad():
        for key in loaded:
            if own[key].shape != state[key].shape:
                raise ValueError(
                    f'pretrained_pth {path!r}: {key} has shape '
                    f'{tuple(state[key].shape)}, the model has '
                    f'{tuple(own[key].shape)}')
            own[key].copy_(state[key])
    print_log(f'Loaded {len(loaded)} tensors from {path}: '
              f'{sorted({k.split(".")[0] for k in loaded})}', logger='current')
    return loaded
