"""VGG-16's convolutional trunk in plain torch (no torchvision).

The layers and their indices are torchvision's ``vgg16().features``, so a
torchvision state dict (``features.N.weight`` / ``features.N.bias``, e.g.
``vgg16-397923af.pth``) loads into it unchanged.  ``forward`` returns the
activations LPIPS taps: after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
"""
import os
from typing import List

import torch
from torch import nn

# torchvision's configuration 'D': channel counts, 'M' = 2×2 max-pooling.
VGG16_LAYOUT = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512,
                512, 'M', 512, 512, 512, 'M')
LPIPS_TAP_NAMES = ('relu1_2', 'relu2_2', 'relu3_3', 'relu4_3', 'relu5_3')


def _build_features():
    layers, in_channels = [], 3
    for spec in VGG16_LAYOUT:
        if spec == 'M':
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_channels, spec, 3, padding=1), nn.ReLU()]
            in_channels = spec
    return nn.Sequential(*layers)


class VGG16Trunk(nn.Module):
    """``features`` of torchvision's VGG-16, returning the LPIPS taps."""

    channels = (64, 128, 256, 512, 512)

    def __init__(self):
        super().__init__()
        self.features = _build_features()
        # The ReLU right before each max-pool ends a block: those are the
        # taps (indices 3, 8, 15, 22, 29 of ``features``).
        self.tap_indices = tuple(
            i - 1 for i, layer in enumerate(self.features)
            if isinstance(layer, nn.MaxPool2d))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torchvision's initialisation of an untrained VGG."""
        for layer in self.features:
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, mode='fan_out',
                                        nonlinearity='relu')
                nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.tap_indices:
                taps.append(x)
                if len(taps) == len(self.tap_indices):
                    break  # the last max-pool is not needed
        return taps

    def load_torchvision_checkpoint(self, path: str) -> None:
        """Load ``features.*`` from a torchvision VGG-16 state dict file
        (its ``classifier.*`` weights are ignored)."""
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f'vgg_checkpoint={path!r}: no such file. Give a torchvision '
                'VGG-16 state dict such as vgg16-397923af.pth, or leave '
                'vgg_checkpoint unset for a random trunk (tests only).')
        state = torch.load(path, map_location='cpu', weights_only=True)
        if isinstance(state, dict) and isinstance(state.get('state_dict'),
                                                  dict):
            state = state['state_dict']
        features = {k: v for k, v in state.items()
                    if k.startswith('features.')}
        expected = set(self.state_dict())
        missing = sorted(expected - set(features))
        unexpected = sorted(set(features) - expected)
        if missing or unexpected:
            raise KeyError(
                f'vgg_checkpoint={path!r} is not a torchvision VGG-16 state '
                f'dict: missing {missing[:4]}, unexpected {unexpected[:4]} '
                f'({len(missing)} missing; expected keys '
                'features.0.weight ... features.28.bias)')
        try:
            self.load_state_dict(features, strict=True)
        except RuntimeError as error:
            raise RuntimeError(
                f'vgg_checkpoint={path!r} does not fit VGG-16: {error}'
            ) from error
