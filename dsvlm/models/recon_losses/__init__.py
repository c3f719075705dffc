"""Reconstruction losses of the DS-VLM supervisor (``RECON_LOSSES``).

All share one call, ``loss(pred_image, target_image, noise=None,
noise_pred=None)``, with images in the VAE's ``[-1, 1]`` (see ``base``).
``CombinedReconLoss`` weights several and returns ``loss_recon_<name>`` keys;
``build_recon_loss`` turns any loss config into one.
"""
from .base import ReconLoss
from .combined import CombinedReconLoss, build_recon_loss
from .noise import NoisePredictionLoss
from .perceptual import (PerceptualReconLoss, RandomTrunkWarning,
                         shipped_lpips_heads_path)
from .pixel import L1ReconLoss
from .ssim import SSIMReconLoss, ssim
from .vgg import VGG16Trunk

__all__ = [
    'ReconLoss', 'L1ReconLoss', 'SSIMReconLoss', 'PerceptualReconLoss',
    'NoisePredictionLoss', 'CombinedReconLoss', 'build_recon_loss',
    'RandomTrunkWarning', 'VGG16Trunk', 'shipped_lpips_heads_path', 'ssim'
]
