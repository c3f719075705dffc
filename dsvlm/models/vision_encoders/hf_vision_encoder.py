"""CLIP and SigLIP vision towers from transformers."""
from typing import Dict, Optional

import torch
from torch import nn
from transformers import (CLIPVisionConfig, CLIPVisionModel,
                          SiglipVisionConfig, SiglipVisionModel)

from dsvlm.registry import VISION_ENCODERS
from ..hf_build import build_hf_module
from ..train_mode import apply_train_mode

TOWERS = {
    'clip': (CLIPVisionModel, CLIPVisionConfig, True),
    'siglip': (SiglipVisionModel, SiglipVisionConfig, False),
}  # model_type -> (model class, config class, has a CLS token)
SELECT_FEATURES = ('patch', 'cls_patch')
FEATURE_LEVELS = ('low', 'mid', 'high')


def default_feature_levels(num_layers: int) -> Dict[str, int]:
    """Layers at a third, two thirds and the whole depth (1-based)."""
    return dict(low=max(1, round(num_layers / 3)),
                mid=max(1, round(2 * num_layers / 3)), high=num_layers)


@VISION_ENCODERS.register_module()
class HFVisionEncoder(nn.Module):
    """A transformers vision tower with LLaVA's feature selection.

    Args:
        model_type: ``'clip'`` or ``'siglip'``.
        pretrained: local directory of a CLIP/SigLIP checkpoint (a full
            CLIP/SigLIP model directory is fine: only the vision tower loads).
        config: the vision config fields, to build with random weights.
        select_layer: hidden state the connector reads (LLaVA: -2).
        select_feature: ``'patch'`` (drop CLS, LLaVA-1.5) or ``'cls_patch'``.
        train_mode: ``'frozen'``, ``'full'`` or ``'lora'``.  Never run under
            ``torch.no_grad()``: a frozen tower still passes gradients back to
            nothing, and a trainable one must receive them (DS-VLM).
        feature_levels: the tower's low/mid/high layers (1-based), which
            supervisors read by level; default: a third, two thirds and all
            of the depth (CLIP-L: 8/16/24, the DS-VLM paper's).
    """

    def __init__(self,
                 model_type: str = 'clip',
                 pretrained: Optional[str] = None,
                 config: Optional[dict] = None,
                 select_layer: int = -2,
                 select_feature: str = 'patch',
                 train_mode: str = 'frozen',
                 lora_cfg: Optional[dict] = None,
                 gradient_checkpointing: bool = False,
                 feature_levels: Optional[Dict[str, int]] = None,
                 dtype=None):
        super().__init__()
        if model_type not in TOWERS:
            raise ValueError(f'vision_encoder.model_type={model_type!r}; '
                             f'choose one of {", ".join(TOWERS)}')
        if select_feature not in SELECT_FEATURES:
            raise ValueError(f'vision_encoder.select_feature={select_feature!r}'
                             f'; choose one of {", ".join(SELECT_FEATURES)}')
        model_cls, config_cls, self.has_cls_token = TOWERS[model_type]
        if select_feature == 'cls_patch' and not self.has_cls_token:
            raise ValueError(f'{model_type} has no CLS token: use '
                             "select_feature='patch'")
        tower = build_hf_module(model_cls, pretrained, config, config_cls,
                                dtype=dtype, what='vision_encoder')
        self.config = tower.config
        if gradient_checkpointing:
            tower.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs=dict(use_reentrant=False))
        self.select_layer = select_layer
        self.select_feature = select_feature
        self.train_mode = train_mode
        self.tower = apply_train_mode(tower, train_mode, lora_cfg,
                                      key='vision_encoder.train_mode')
        self.feature_levels = self._check_levels(
            feature_levels or default_feature_levels(self.num_layers))

    def _check_levels(self, levels: Dict[str, int]) -> Dict[str, int]:
        for level, layer in levels.items():
            if level not in FEATURE_LEVELS or not 1 <= layer <= self.num_layers:
                raise ValueError(
                    f'vision_encoder.feature_levels={levels}: levels are '
                    f'{", ".join(FEATURE_LEVELS)} and layers 1..'
                    f'{self.num_layers}')
        return {k: levels[k] for k in FEATURE_LEVELS if k in levels}

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def image_size(self) -> int:
        """The side of the square images the tower takes."""
        return self.config.image_size

    @property
    def num_tokens(self) -> int:
        """The tokens :meth:`forward` returns per image: the patches, and
        the CLS token unless ``select_feature='patch'`` drops it."""
        patches = (self.image_size // self.config.patch_size) ** 2
        keeps_cls = self.has_cls_token and self.select_feature != 'patch'
        return patches + int(keeps_cls)

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def dtype(self) -> torch.dtype:
        return next(self.tower.parameters()).dtype

    def forward(self, pixel_values: torch.Tensor):
        """Returns ``(tokens, hidden_states)``: the selected tokens
        ``[B, N, C]`` and all hidden states (embeddings, layer 1..L)."""
        out = self.tower(pixel_values=pixel_values.to(self.dtype),
                         output_hidden_states=True)
        hidden_states = tuple(out.hidden_states)
        tokens = hidden_states[self.select_layer]
        if self.has_cls_token and self.select_feature == 'patch':
            tokens = tokens[:, 1:]
        return tokens, hidden_states
