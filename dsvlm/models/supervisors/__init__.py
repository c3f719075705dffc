"""Supervisors: training-only losses computed from the VLM's visual
features (:class:`dsvlm.models.VisualFeatures`).

A supervisor is an ``nn.Module`` registered in ``SUPERVISORS`` with a
``loss(features, data_samples) -> dict`` method.  The VLM builds it with the
keyword arguments ``encoder_dim``, ``connector_dim``,
``encoder_num_layers`` and ``encoder_levels`` (the encoder's low/mid/high
layers, ``{level: layer}``), which its ``__init__`` must accept.  The image
normalisation of the batch comes with the features (``image_mean``,
``image_std``).
"""
from .diffusion_supervisor import DiffusionSupervisor
from .moe_cross_attention import (MoECrossAttnProcessor,
                                  install_moe_cross_attention,
                                  router_probabilities)
from .shared_cross_attention import (BranchAwareAttnProcessor,
                                     install_shared_cross_attention,
                                     pack_branch_features)

__all__ = [
    'DiffusionSupervisor', 'MoECrossAttnProcessor',
    'install_moe_cross_attention', 'router_probabilities',
    'BranchAwareAttnProcessor', 'install_shared_cross_attention',
    'pack_branch_features'
]
