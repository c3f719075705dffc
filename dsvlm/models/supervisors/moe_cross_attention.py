"""MoE / independent cross-attention (ICA) of DS-VLM (Eq. 4-7).

For every UNet cross-attention layer (``attn2``; SD-1.5 has 16), with the
shared query ``Q = Z W_q`` (the layer's ``to_q``, shape ``(B, N, d)``, ``d``
= the layer's inner dim ``heads * head_dim`` = ``to_q.out_features``):

- branch ``j`` attends over its own feature ``c_j``:
  ``Z_j = softmax(Q K_j^T / sqrt(head_dim)) V_j`` per head (diffusers'
  multi-head scaled dot product, ``attn.scale`` is not used, as in
  ``AttnProcessor2_0``);
- the text branch (if any) is branch 0 and uses the layer's own frozen
  ``to_k``/``to_v`` (``Z'``); every image branch gets NEW trainable
  ``W'_k``/``W'_v`` copied from ``to_k``/``to_v`` at install time (``Z''_i``),
  as IP-Adapter initialises ``to_k_ip``/``to_v_ip``;
- router ``W_r`` (``d x num_branches``, no bias, zero-initialised so that
  training starts from uniform ``P``):
  ``P = softmax(mean_tokens(Q) W_r)`` (= ``softmax(mean_tokens(Q W_r))``,
  one vector per sample and layer), softmax in float32;
- ``Z_new = sum_j P_j Z_j``, then the layer's ``to_out`` as usual.

General form: the active features, in order, are the branches. If ``'text'``
is active it comes first and uses the original K/V (``text_branch=True``);
each active image level gets its own new K/V. So TS+IS-all = 4 branches,
IS-high+mid = 2 new branches and no original one, TS-only = 1 branch (plain
cross-attention, no router). With one branch there is no router (``P = 1``).

Features reach the processors packed: see ``shared_cross_attention.py``
(``pack_branch_features``: token-axis concatenation in
``encoder_hidden_states`` plus ``branch_lengths`` in
``cross_attention_kwargs``). The supervisor calls the UNet the same way for
SCA and ICA; only the installer differs.

Ownership: the processors are ``nn.Module`` s returned in a ``ModuleDict`` that
the supervisor registers as a submodule. The UNet's ``Attention`` layers hold
a plain-callable handle to them, not the module itself, so the UNet's
``parameters()``/``state_dict()`` stay exactly the pretrained ones (freezing
the UNet after install does not freeze the new K/V; no duplicate keys).
Consequence: move/cast the supervisor (or the returned ``ModuleDict``), not
only the UNet; FSDP must not shard the UNet blocks separately from it.

After each forward, ``processor.last_router_probs`` holds the batch-mean ``P``
of that layer (detached); :func:`router_probabilities` collects them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .shared_cross_attention import (BranchAwareAttnProcessor,
                                     attention_layer_names)


def _copy_linear(layer: nn.Module) -> nn.Linear:
    """A new trainable ``nn.Linear`` with ``layer``'s shape, dtype, device and
    values (works on the meta device too)."""
    weight, bias = layer.weight, getattr(layer, 'bias', None)
    copy = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                     device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        copy.weight.copy_(weight)
        if bias is not None:
            copy.bias.copy_(bias)
    return copy.requires_grad_(True)


class MoECrossAttnProcessor(nn.Module):
    """Per-layer MoE cross-attention: new K/V per image branch and a router.

    Args:
        attn: the diffusers ``Attention`` (``attn2``) it will serve; only its
            shapes and K/V values are read, it is not stored.
        num_image_branches: image features with their own new K/V.
        text_branch: whether branch 0 is the text feature using the layer's
            original ``to_k``/``to_v``.
    """

    def __init__(self, attn: nn.Module, num_image_branches: int = 3,
                 text_branch: bool = True):
        super().__init__()
        self.text_branch = bool(text_branch)
        self.num_branches = int(num_image_branches) + int(self.text_branch)
        if num_image_branches < 0 or self.num_branches < 1:
            raise ValueError(
                'MoECrossAttnProcessor needs at least one branch; got '
                f'num_image_branches={num_image_branches}, '
                f'text_branch={text_branch}.')
        self.to_k_branches = nn.ModuleList(
            _copy_linear(attn.to_k) for _ in range(num_image_branches))
        self.to_v_branches = nn.ModuleList(
            _copy_linear(attn.to_v) for _ in range(num_image_branches))
        self.router = None
        if self.num_branches > 1:
            q_weight = attn.to_q.weight
            self.router = nn.Linear(
                q_weight.shape[0], self.num_branches, bias=False,
                device=q_weight.device, dtype=q_weight.dtype)
            nn.init.zeros_(self.router.weight)
        self.last_router_probs: torch.Tensor | None = None

    def key_value(self, attn: nn.Module, branch: int):
        """The (to_k, to_v) pair of ``branch``."""
        if self.text_branch:
            if branch == 0:
                return attn.to_k, attn.to_v
            branch -= 1
        return self.to_k_branches[branch], self.to_v_branches[branch]

    def route(self, query: torch.Tensor) -> torch.Tensor:
        """``P = softmax(mean_tokens(Q) W_r)``: (B, N, d) -> (B, branches)."""
        if self.router is None:
            return query.new_ones(query.shape[0], 1)
        logits = self.router(query.mean(dim=1))
        return logits.float().softmax(dim=-1).to(query.dtype)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None,
                 attention_mask=None, temb=None, branch_lengths=None):
        # explicit signature: diffusers drops keywords it does not declare
        return super().__call__(attn, hidden_states, encoder_hidden_states,
                                attention_mask, temb, branch_lengths)

    def forward(self, attn, hidden_states, encoder_hidden_states=None,
                attention_mask=None, temb=None, branch_lengths=None):
        lengths = self._check_lengths(encoder_hidden_states, branch_lengths)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(
                batch, channel, height * width).transpose(1, 2)
        batch = encoder_hidden_states.shape[0]

        masks = [None] * len(lengths)
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(
                attention_mask, sum(lengths), batch)
            attention_mask = attention_mask.view(
                batch, attn.heads, -1, attention_mask.shape[-1])
            masks = attention_mask.split(lengths, dim=-1)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(
                hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        probs = self.route(query)
        self.last_router_probs = probs.detach().float().mean(dim=0)

        mixed = 0
        contexts = encoder_hidden_states.split(lengths, dim=1)
        for branch, (context, mask) in enumerate(zip(contexts, masks)):
            if attn.norm_cross:
                context = attn.norm_encoder_hidden_states(context)
            to_k, to_v = self.key_value(attn, branch)
            key, value = to_k(context), to_v(context)
            head_dim = key.shape[-1] // attn.heads
            q = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
            key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
            value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
            if attn.norm_q is not None:
                q = attn.norm_q(q)
            if attn.norm_k is not None:
                key = attn.norm_k(key)
            z = F.scaled_dot_product_attention(
                q, key, value, attn_mask=mask, dropout_p=0.0, is_causal=False)
            mixed = mixed + probs[:, branch, None, None, None] * z

        hidden_states = mixed.transpose(1, 2).reshape(
            batch, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(
                batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _check_lengths(self, encoder_hidden_states, branch_lengths):
        if encoder_hidden_states is None or branch_lengths is None:
            raise ValueError(
                'MoECrossAttnProcessor needs the packed features: call the '
                'UNet with encoder_hidden_states, cross_attention_kwargs = '
                'pack_branch_features(features) '
                '(dsvlm/models/supervisors/shared_cross_attention.py).')
        lengths = [int(n) for n in branch_lengths]
        if len(lengths) != self.num_branches:
            raise ValueError(
                f'MoECrossAttnProcessor was installed with {self.num_branches}'
                f' branches (text_branch={self.text_branch}) but got '
                f'{len(lengths)} features (branch_lengths={lengths}).')
        if sum(lengths) != encoder_hidden_states.shape[1]:
            raise ValueError(
                f'branch_lengths {lengths} sum to {sum(lengths)} but '
                f'encoder_hidden_states has {encoder_hidden_states.shape[1]} '
                'tokens.')
        return lengths


class _ProcessorHandle:
    """What the ``Attention`` layer holds: a plain callable forwarding to a
    processor module owned elsewhere (so the UNet does not adopt it)."""

    def __init__(self, processor: nn.Module):
        self.processor = processor

    def __call__(self, attn, hidden_states, encoder_hidden_states=None,
                 attention_mask=None, temb=None, branch_lengths=None):
        return self.processor(attn, hidden_states, encoder_hidden_states,
                              attention_mask, temb, branch_lengths)


def install_moe_cross_attention(unet: nn.Module, num_image_branches: int = 3,
                                text_branch: bool = True) -> nn.ModuleDict:
    """Put a :class:`MoECrossAttnProcessor` on every ``attn2`` of ``unet``
    and :class:`BranchAwareAttnProcessor` on every other attention layer.

    Returns the processors, keyed by layer name with ``.`` -> ``_`` (e.g.
    ``down_blocks_0_attentions_0_transformer_blocks_0_attn2``); register it
    as a submodule of the supervisor: it owns all the new parameters.
    """
    cross, other = attention_layer_names(unet)
    if not cross:
        raise ValueError(
            f'install_moe_cross_attention: {type(unet).__name__} has no '
            'cross-attention (attn2) layers; is cross_attention_dim set?')
    modules = dict(unet.named_modules())
    processors = nn.ModuleDict()
    table = {f'{name}.processor': BranchAwareAttnProcessor()
             for name in other}
    for name in cross:
        processor = MoECrossAttnProcessor(
            modules[name], num_image_branches, text_branch)
        processors[name.replace('.', '_')] = processor
        table[f'{name}.processor'] = _ProcessorHandle(processor)
    unet.set_attn_processor(table)
    return processors


def router_probabilities(processors: nn.ModuleDict) -> dict:
    """``{layer: mean P (num_branches,)}`` from the last forward; layers not
    run yet are left out."""
    return {name: p.last_router_probs for name, p in processors.items()
            if p.last_router_probs is not None}
