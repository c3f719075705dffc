"""Branch-packed UNet conditioning and the shared cross-attention (SCA).

How the supervision features reach the UNet (used by SCA and MoE alike):
the adapted features ``[c_0, c_1, ...]`` (each ``(B, N_i, D)`` with ``D`` the
UNet's ``cross_attention_dim``) are concatenated along the token axis into
``encoder_hidden_states`` and their token counts travel in
``cross_attention_kwargs={'branch_lengths': (N_0, N_1, ...)}``::

    context, attn_kwargs = pack_branch_features(features)
    eps = unet(x_t, t, encoder_hidden_states=context,
               cross_attention_kwargs=attn_kwargs).sample

Why this channel: it is stateless (the lengths go with each call, so
gradient-checkpoint recomputation and several UNet calls per step are safe),
it uses only diffusers' public arguments, and the same call serves both
designs. ``cross_attention_kwargs`` also reaches every self-attention (attn1),
and diffusers warns about and drops keywords a processor's ``__call__`` does
not declare, so every Attention gets a processor that declares
``branch_lengths``: :class:`BranchAwareAttnProcessor` (plain scaled-dot-product
attention, ignores the lengths) on attn1, and on attn2 either the same (SCA)
or the MoE processor (ICA, ``moe_cross_attention.py``).

SCA (Table 5): one cross-attention over the concatenation with the layer's own
frozen K/V — a plain UNet call on the concatenated features.
:func:`install_shared_cross_attention` only installs the branch-aware plain
processors; it adds no parameters.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def pack_branch_features(
        features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """Concatenate ``(B, N_i, D)`` features along tokens.

    Returns ``(encoder_hidden_states, cross_attention_kwargs)`` for a UNet
    whose processors were set by :func:`install_shared_cross_attention` or
    ``install_moe_cross_attention``.
    """
    features = list(features)
    if not features:
        raise ValueError('pack_branch_features: got no features to pack.')
    shapes = [tuple(f.shape) for f in features]
    if any(len(s) != 3 or s[0] != shapes[0][0] or s[2] != shapes[0][2]
           for s in shapes):
        raise ValueError(
            'pack_branch_features: every feature must be (batch, tokens, '
            'cross_attention_dim) with the same batch and width; '
            f'got {shapes}')
    lengths = tuple(int(s[1]) for s in shapes)
    return torch.cat(features, dim=1), dict(branch_lengths=lengths)


class BranchAwareAttnProcessor:
    """diffusers' ``AttnProcessor2_0`` that accepts (and ignores)
    ``branch_lengths``: plain attention over whatever context it gets."""

    def __init__(self):
        from diffusers.models.attention_processor import AttnProcessor2_0
        self._plain = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None,
                 attention_mask=None, temb=None, branch_lengths=None):
        return self._plain(attn, hidden_states, encoder_hidden_states,
                           attention_mask, temb)


def attention_layer_names(unet: nn.Module) -> tuple[list[str], list[str]]:
    """Names of the UNet's ``Attention`` modules: (cross-attention attn2
    layers, all the others)."""
    from diffusers.models.attention_processor import Attention
    cross, other = [], []
    for name, module in unet.named_modules():
        if isinstance(module, Attention):
            is_cross = name.endswith('attn2') and module.is_cross_attention
            (cross if is_cross else other).append(name)
    return cross, other


def install_shared_cross_attention(unet: nn.Module) -> nn.ModuleDict:
    """SCA: set :class:`BranchAwareAttnProcessor` on every attention layer.

    The UNet then attends over the packed concatenation with its original
    K/V. Returns an empty ``ModuleDict`` (no trainable parts) so that the
    caller treats SCA and MoE alike.
    """
    cross, other = attention_layer_names(unet)
    unet.set_attn_processor(
        {f'{name}.processor': BranchAwareAttnProcessor()
         for name in cross + other})
    return nn.ModuleDict()
