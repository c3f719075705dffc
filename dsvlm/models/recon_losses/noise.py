"""The diffusion objective itself (DS-VLM Eq. 3)."""
import torch
import torch.nn.functional as F

from dsvlm.registry import RECON_LOSSES

from .base import ReconLoss


@RECON_LOSSES.register_module()
class NoisePredictionLoss(ReconLoss):
    """``L_simple = ‖ε − ε̂‖²``, averaged over every element.

    Needs ``noise`` (the target the scheduler defines: ``ε`` for
    epsilon-prediction, ``v`` for v-prediction) and ``noise_pred``; no images,
    so a supervisor with only this loss never has to decode.  Computed in
    float32 whatever the UNet's dtype.
    """

    default_name = 'noise'
    needs_images = False
    needs_noise = True

    def forward(self, pred_image=None, target_image=None, noise=None,
                noise_pred=None) -> torch.Tensor:
        self._require(noise=noise, noise_pred=noise_pred)
        return F.mse_loss(noise_pred.float(), noise.float())
