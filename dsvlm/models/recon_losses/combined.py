"""Weighted combinations of reconstruction losses, one log key per term."""
import numbers
from typing import Dict, List, Union

import torch
from torch import nn

from dsvlm.registry import RECON_LOSSES

from .base import ReconLoss


@RECON_LOSSES.register_module()
class CombinedReconLoss(nn.Module):
    """Several weighted reconstruction losses.

    Example::

        dict(type='CombinedReconLoss', losses=[
            dict(type='PerceptualReconLoss', weight=1.0),
            dict(type='SSIMReconLoss', weight=0.5)])

    Each entry is a ``RECON_LOSSES`` config with an optional ``weight``
    (default 1), or a built ``ReconLoss``.  Called like a single loss
    (``pred_image, target_image, noise=None, noise_pred=None``), it returns
    ``{'loss_recon_<name>': weight * value}``; MMEngine sums every key that
    contains ``loss``.  Two terms need distinct ``name``s.
    """

    def __init__(self, losses: List[Union[dict, ReconLoss]]):
        super().__init__()
        if not losses:
            raise ValueError(
                'CombinedReconLoss: `losses` is empty; give at least one, '
                "e.g. dict(type='PerceptualReconLoss')")
        terms, weights = [], []
        for index, cfg in enumerate(losses):
            weight = 1.0
            if isinstance(cfg, dict):
                cfg = dict(cfg)
                weight = cfg.pop('weight', 1.0)
                cfg = RECON_LOSSES.build(cfg)
            if not isinstance(cfg, ReconLoss):
                raise TypeError(f'CombinedReconLoss.losses[{index}] is a '
                                f'{type(cfg).__name__}, not a ReconLoss')
            if not isinstance(weight, numbers.Real) or weight < 0:
                raise ValueError(f'CombinedReconLoss.losses[{index}].weight '
                                 f'must be a number >= 0, got {weight!r}')
            terms.append(cfg)
            weights.append(float(weight))
        keys = [term.log_key for term in terms]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            raise ValueError(
                f'CombinedReconLoss: two terms log under {duplicates}; give '
                "them distinct `name`s, e.g. dict(type=..., name='ssim_b')")
        self.terms = nn.ModuleList(terms)
        self.weights = weights

    @property
    def needs_images(self) -> bool:
        return any(term.needs_images for term in self.terms)

    @property
    def needs_noise(self) -> bool:
        return any(term.needs_noise for term in self.terms)

    @property
    def log_keys(self) -> List[str]:
        return [term.log_key for term in self.terms]

    def forward(self, pred_image=None, target_image=None, noise=None,
                noise_pred=None) -> Dict[str, torch.Tensor]:
        return {
            term.log_key: weight * term(pred_image, target_image, noise=noise,
                                        noise_pred=noise_pred)
            for term, weight in zip(self.terms, self.weights)
        }

    def extra_repr(self) -> str:
        return 'weights=' + ', '.join(
            f'{t.name}: {w:g}' for t, w in zip(self.terms, self.weights))


def build_recon_loss(cfg: Union[dict, list, nn.Module]) -> CombinedReconLoss:
    """Build any reconstruction-loss config as a ``CombinedReconLoss``, so
    the caller always gets a dict of log keys: a single loss dict (with an
    optional ``weight``), a list of them, a ``CombinedReconLoss`` dict, or a
    built module."""
    if isinstance(cfg, CombinedReconLoss):
        return cfg
    if isinstance(cfg, ReconLoss):
        return CombinedReconLoss([cfg])
    if isinstance(cfg, (list, tuple)):
        return CombinedReconLoss(list(cfg))
    if isinstance(cfg, dict):
        if cfg.get('type') in ('CombinedReconLoss', CombinedReconLoss):
            return RECON_LOSSES.build(cfg)
        return CombinedReconLoss([cfg])
    raise TypeError('recon loss config must be a dict, a list of dicts or a '
                    f'module, got {type(cfg).__name__}')
