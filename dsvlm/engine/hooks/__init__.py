"""Hooks of dsvlm (the import location of the ``HOOKS`` registry)."""
from .recon_visualization_hook import ReconVisualizationHook

__all__ = ['ReconVisualizationHook']
