"""Pixel-space reconstruction loss (the paper's MAE)."""
import torch

from dsvlm.registry import RECON_LOSSES

from .base import ReconLoss


@RECON_LOSSES.register_module(name=['L1ReconLoss', 'MAEReconLoss'])
class L1ReconLoss(ReconLoss):
    """Mean absolute error between the reconstruction and the image.

    Computed on the values as given (``[-1, 1]`` for VAE images, so it is
    twice the MAE measured on ``[0, 1]``).
    """

    default_name = 'mae'

    def forward(self, pred_image=None, target_image=None, noise=None,
                noise_pred=None) -> torch.Tensor:
        self._require_images(pred_image, target_image)
        return (pred_image.float() - target_image.float()).abs().mean()
