"""The interface every reconstruction loss shares.

One call signature serves all losses, whether they compare images or noise::

    loss(pred_image, target_image, noise=None, noise_pred=None) -> Tensor

* ``pred_image`` / ``target_image``: ``N×C×H×W`` images in the VAE's value
  range ``[-1, 1]`` (the reconstruction decoded from the one-step clean-latent
  estimate, and the original image).  Losses that take another range say so
  with a ``value_range`` argument.
* ``noise`` / ``noise_pred``: the diffusion target ``ε`` (or whatever the
  scheduler predicts, e.g. ``v``) and the UNet's prediction ``ε̂``.

A loss uses the inputs it needs and fails, naming them, if they are missing.
``needs_images`` tells the caller whether it has to decode images at all (the
VAE decode is the expensive part), ``needs_noise`` whether it has to pass the
noise.  Every loss returns an unweighted scalar; ``CombinedReconLoss`` weights
the terms and logs each under ``log_key`` (``loss_recon_<name>``).
"""
import re
from typing import Optional

import torch
from torch import nn


class ReconLoss(nn.Module):
    """Base class: a named loss with declared inputs."""

    default_name: str = 'recon'
    needs_images: bool = True
    needs_noise: bool = False

    def __init__(self, name: Optional[str] = None):
        super().__init__()
        name = self.default_name if name is None else name
        if not re.fullmatch(r'[A-Za-z0-9_]+', name or ''):
            raise ValueError(
                f'{type(self).__name__}: name={name!r} must be letters, '
                'digits and underscores (it becomes the log key '
                f'loss_recon_<name>)')
        self.name = name

    @property
    def log_key(self) -> str:
        return f'loss_recon_{self.name}'

    def _require(self, **inputs) -> None:
        missing = [k for k, v in inputs.items() if v is None]
        if missing:
            raise ValueError(
                f'{type(self).__name__} (log key {self.log_key}) needs '
                f'{" and ".join(inputs)}; got None for {", ".join(missing)}')
        shapes = {k: tuple(v.shape) for k, v in inputs.items()}
        if len(set(shapes.values())) != 1:
            raise ValueError(f'{type(self).__name__}: shapes differ: {shapes}')

    def _require_images(self, pred_image, target_image) -> None:
        self._require(pred_image=pred_image, target_image=target_image)
        if pred_image.dim() != 4:
            raise ValueError(
                f'{type(self).__name__} expects N×C×H×W images, got shape '
                f'{tuple(pred_image.shape)}')

    def forward(self,
                pred_image: Optional[torch.Tensor] = None,
                target_image: Optional[torch.Tensor] = None,
                noise: Optional[torch.Tensor] = None,
                noise_pred: Optional[torch.Tensor] = None) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f'name={self.name!r}'


def check_value_range(owner: str, value_range) -> tuple:
    low, high = (float(v) for v in value_range)
    if not high > low:
        raise ValueError(f'{owner}: value_range={tuple(value_range)} must be '
                         '(low, high) with high > low, e.g. (-1, 1) for VAE '
                         'images or (0, 1)')
    return low, high
