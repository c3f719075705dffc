"""LPIPS-VGG perceptual loss, without torchvision and without importing lpips.

LPIPS v0.1 (Zhang et al. 2018) as the ``lpips`` package computes it with
``net='vgg'``: scale the ``[-1, 1]`` input with ImageNet statistics, take the
VGG-16 activations after relu1_2 … relu5_3, unit-normalise each over
channels, square the difference, weight the channels with a learned 1×1 conv
(no bias), average over space and sum over the five layers.

The five linear heads ship inside the ``lpips`` wheel (``weights/v0.1/
vgg.pth``); they are read from there without importing ``lpips`` (whose import
needs torchvision).  The VGG trunk comes from a torchvision VGG-16 state dict
(``vgg_checkpoint``); without one it is random and the loss is not LPIPS.
"""
import importlib.util
import os
import warnings
from typing import List, Optional

import torch
from mmengine.logging import print_log
from torch import nn

from dsvlm.registry import RECON_LOSSES

from ..hf_build import is_architecture_only
from .base import ReconLoss, check_value_range
from .vgg import VGG16Trunk

# lpips.ScalingLayer: (x - shift) / scale maps [-1, 1] to ImageNet statistics.
LPIPS_SHIFT = (-.030, -.088, -.188)
LPIPS_SCALE = (.458, .448, .450)
NORMALISE_EPS = 1e-10  # lpips.normalize_tensor


def shipped_lpips_heads_path(net: str = 'vgg', version: str = '0.1') -> str:
    """The heads file inside the installed ``lpips`` package."""
    spec = importlib.util.find_spec('lpips')
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            'PerceptualReconLoss needs the LPIPS linear heads, which ship '
            'with the `lpips` package: `pip install lpips --no-deps` (it must '
            'not pull torchvision), or give heads_checkpoint=PATH to a '
            f'LPIPS v{version} {net}.pth file.')
    package_dir = list(spec.submodule_search_locations)[0]
    return os.path.join(package_dir, 'weights', f'v{version}', f'{net}.pth')


class RandomTrunkWarning(UserWarning):
    """The perceptual loss runs on a random VGG trunk: it is not LPIPS."""


@RECON_LOSSES.register_module(name=['PerceptualReconLoss', 'LPIPSReconLoss'])
class PerceptualReconLoss(ReconLoss):
    """LPIPS-VGG distance, averaged over the batch (the paper's default).

    Args:
        vgg_checkpoint: a torchvision VGG-16 state dict file
            (``vgg16-397923af.pth``).  ``None`` builds a random trunk and
            warns loudly: fine for tests and the tiny world, not LPIPS.
        heads_checkpoint: the LPIPS v0.1 VGG heads; default the file shipped
            in the ``lpips`` package.
        value_range: the range of the inputs, mapped to LPIPS's ``[-1, 1]``.

    Trunk and heads are frozen (``requires_grad=False``, eval mode);
    gradients flow to the input images.  Runs in the dtype of its weights.
    """

    default_name = 'perceptual'

    def __init__(self, vgg_checkpoint: Optional[str] = None,
                 heads_checkpoint: Optional[str] = None,
                 value_range=(-1.0, 1.0), name=None):
        super().__init__(name)
        self.value_range = check_value_range('PerceptualReconLoss',
                                             value_range)
        self.register_buffer('shift', torch.tensor(LPIPS_SHIFT).view(
            1, 3, 1, 1), persistent=False)
        self.register_buffer('scale', torch.tensor(LPIPS_SCALE).view(
            1, 3, 1, 1), persistent=False)
        self.trunk = VGG16Trunk()
        self.heads = nn.ModuleList(
            nn.Conv2d(c, 1, kernel_size=1, bias=False)
            for c in VGG16Trunk.channels)

        if vgg_checkpoint is None:
            message = (
                'PerceptualReconLoss: no vgg_checkpoint given, so the VGG-16 '
                'trunk has RANDOM weights and this loss is NOT the real '
                'LPIPS (fine for tests and the tiny world only). Set '
                'vgg_checkpoint to a torchvision vgg16-397923af.pth file.')
            warnings.warn(message, RandomTrunkWarning, stacklevel=2)
            print_log(message, logger='current', level=30)
        elif not is_architecture_only():  # inspect_model: shapes only
            self.trunk.load_torchvision_checkpoint(vgg_checkpoint)
        self.heads_checkpoint = heads_checkpoint or shipped_lpips_heads_path()
        self._load_heads(self.heads_checkpoint)

        self.requires_grad_(False)
        self.eval()

    def _load_heads(self, path: str) -> None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f'LPIPS heads file {path!r} not found')
        state = torch.load(path, map_location='cpu', weights_only=True)
        for index, head in enumerate(self.heads):
            key = f'lin{index}.model.1.weight'
            if key not in state or state[key].shape != head.weight.shape:
                found = {k: tuple(v.shape) for k, v in state.items()}
                raise KeyError(
                    f'{path!r} is not an LPIPS VGG heads file: expected {key} '
                    f'of shape {tuple(head.weight.shape)}, found {found}')
            head.weight.data.copy_(state[key])

    def train(self, mode: bool = True):
        """Frozen: always in eval mode (a no-op today, there is no dropout
        or batch norm, but it keeps LPIPS's eval semantics explicit)."""
        return super().train(False)

    def _to_lpips_input(self, image: torch.Tensor) -> torch.Tensor:
        low, high = self.value_range
        if (low, high) != (-1.0, 1.0):
            image = (image - low) * (2 / (high - low)) - 1
        dtype = self.heads[0].weight.dtype
        return (image.to(dtype) - self.shift.to(dtype)) / self.scale.to(dtype)

    def distance(self, pred_image: torch.Tensor,
                 target_image: torch.Tensor) -> torch.Tensor:
        """Per-image LPIPS distance, shape ``(N,)``."""
        batch = pred_image.shape[0]
        both = self._to_lpips_input(torch.cat([pred_image, target_image]))
        taps: List[torch.Tensor] = self.trunk(both)  # one pass for both
        total = 0
        for head, tap in zip(self.heads, taps):
            norm = tap.pow(2).sum(dim=1, keepdim=True).sqrt()
            unit = tap / (norm + NORMALISE_EPS)
            diff = (unit[:batch] - unit[batch:]).pow(2)
            total = total + head(diff).mean(dim=(1, 2, 3))
        # at least float32, whatever the trunk's dtype
        return total.to(torch.promote_types(total.dtype, torch.float32))

    def forward(self, pred_image=None, target_image=None, noise=None,
                noise_pred=None) -> torch.Tensor:
        self._require_images(pred_image, target_image)
        if pred_image.shape[1] != 3:
            raise ValueError('PerceptualReconLoss expects RGB images, got '
                             f'{pred_image.shape[1]} channels')
        return self.distance(pred_image, target_image).mean()

    def extra_repr(self) -> str:
        return f'name={self.name!r}, value_range={self.value_range}'
