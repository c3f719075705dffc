"""Distributed strategies dsvlm registers in MMEngine's strategy registry.

* :class:`FSDP2Strategy` (``fsdp2.py``): torch's ``fully_shard`` and
  ``torch.distributed.checkpoint``; runs on CPU with gloo.
* :class:`DeepSpeedZeroStrategy` (``deepspeed_zero.py``): MMEngine's
  ``DeepSpeedStrategy`` fixed for a VLM (only when deepspeed is installed).

``configs/_base_/strategies/`` holds the presets that name them, and
``tools/train.py --strategy NAME`` applies one.
"""
import importlib.util

from .fsdp2 import FSDP2Strategy

__all__ = ['FSDP2Strategy']

if importlib.util.find_spec('deepspeed') is not None:
    from .deepspeed_zero import DeepSpeedZeroStrategy  # noqa: F401
    __all__.append('DeepSpeedZeroStrategy')
