"""Structural similarity (SSIM) and the ``1 − SSIM`` reconstruction loss.

The definition is Wang et al. 2004 as scikit-image computes it with
``gaussian_weights=True, sigma=1.5, use_sample_covariance=False``: local
means, variances and covariance under an 11-tap Gaussian window (σ 1.5),
``C1 = (K1·L)², C2 = (K2·L)²`` with ``K1 = .01, K2 = .03`` and ``L`` the data
range, and the mean of the SSIM map over the pixels whose window lies inside
the image (skimage filters the whole image and then crops that border; this
module convolves without padding, which gives the same pixels), averaged
over channels.
"""
import math

import torch
import torch.nn.functional as F

from dsvlm.registry import RECON_LOSSES

from .base import ReconLoss, check_value_range


def gaussian_window(size: int, sigma: float, dtype=torch.float32,
                    device=None) -> torch.Tensor:
    """The normalised 1-D Gaussian taps, centred on the middle one."""
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    taps = torch.exp(-coords**2 / (2 * sigma**2))
    return taps / taps.sum()


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float,
         window_size: int = 11, sigma: float = 1.5, k1: float = 0.01,
         k2: float = 0.03) -> torch.Tensor:
    """Mean SSIM of each image pair: ``N×C×H×W`` inputs → shape ``(N,)``.

    Differentiable; computed in float32 (float64 when the inputs are).
    """
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError('ssim expects two N×C×H×W tensors of one shape, got '
                         f'{tuple(pred.shape)} and {tuple(target.shape)}')
    height, width = pred.shape[-2:]
    if min(height, width) < window_size:
        raise ValueError(
            f'ssim: images of {height}×{width} pixels are smaller than the '
            f'{window_size}-pixel window')
    dtype = torch.float64 if pred.dtype == torch.float64 else torch.float32
    x, y = pred.to(dtype), target.to(dtype)
    channels = x.shape[1]

    # The five local statistics in one separable depthwise convolution.
    stats = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    taps = gaussian_window(window_size, sigma, dtype, x.device)
    groups = stats.shape[1]
    stats = F.conv2d(stats, taps.view(1, 1, -1, 1).expand(groups, 1, -1, 1),
                     groups=groups)
    stats = F.conv2d(stats, taps.view(1, 1, 1, -1).expand(groups, 1, 1, -1),
                     groups=groups)
    mu_x, mu_y, e_xx, e_yy, e_xy = stats.split(channels, dim=1)

    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov_xy = e_xy - mu_x * mu_y
    c1, c2 = (k1 * data_range)**2, (k2 * data_range)**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / (
        (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2, 3))


@RECON_LOSSES.register_module()
class SSIMReconLoss(ReconLoss):
    """``1 − SSIM``, averaged over the batch.

    Args:
        value_range: the range of the input values; the data range ``L`` of
            the SSIM constants is ``high − low``.  Default ``(-1, 1)``, the
            VAE's range.  SSIM does not change under the affine map from
            ``value_range`` to ``[0, 1]`` (means, variances and constants all
            scale together), so this equals SSIM of the ``[0, 1]`` images
            with ``L = 1``.  Inputs are not clamped (that would cut the
            gradient of out-of-range pixels).
        window_size, sigma, k1, k2: the Gaussian window and the constants.
    """

    default_name = 'ssim'

    def __init__(self, value_range=(-1.0, 1.0), window_size: int = 11,
                 sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03,
                 name=None):
        super().__init__(name)
        low, high = check_value_range('SSIMReconLoss', value_range)
        if window_size < 1 or window_size % 2 == 0 or not math.isfinite(
                sigma) or sigma <= 0:
            raise ValueError('SSIMReconLoss: window_size must be odd and '
                             f'sigma positive, got {window_size}, {sigma}')
        self.value_range = (low, high)
        self.data_range = high - low
        self.window_size, self.sigma, self.k1, self.k2 = (window_size, sigma,
                                                          k1, k2)

    def forward(self, pred_image=None, target_image=None, noise=None,
                noise_pred=None) -> torch.Tensor:
        self._require_images(pred_image, target_image)
        similarity = ssim(pred_image, target_image, self.data_range,
                          self.window_size, self.sigma, self.k1, self.k2)
        return (1 - similarity).mean()

    def extra_repr(self) -> str:
        return (f'name={self.name!r}, value_range={self.value_range}, '
                f'window_size={self.window_size}, sigma={self.sigma}')
