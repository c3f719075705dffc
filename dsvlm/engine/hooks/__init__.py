"""Hooks of dsvlm (the import location of the ``HOOKS`` registry)."""
from .recon_visualization_hook import ReconVisualizationHook
from .safe_checkpoint_hook import SafeCheckpointHook

__all__ = ['ReconVisualizationHook', 'SafeCheckpointHook']
