"""Training engine: MMEngine patches, config completion, strategies and
hooks.

Importing this package applies :func:`apply_mmengine_patches` (see
``compat.py``).  It is also the import location of dsvlm's runners, loops,
strategies, optimizer constructors and wrappers, and other engine
registries.
"""
from . import optim_constructor, optim_wrappers, strategies  # noqa: F401
from .compat import apply_mmengine_patches
from .config import complete_config, load_config

apply_mmengine_patches()

__all__ = ['apply_mmengine_patches', 'complete_config', 'load_config']
