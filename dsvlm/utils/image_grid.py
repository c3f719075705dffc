"""Tile images into one picture (for TensorBoard and PNG files)."""
from typing import Sequence

import numpy as np
import torch


def to_uint8(image: torch.Tensor, value_range=(-1.0, 1.0)) -> np.ndarray:
    """``[3, H, W]`` float tensor in ``value_range`` -> ``H×W×3`` uint8."""
    low, high = value_range
    image = (image.detach().float().cpu() - low) / (high - low)
    return (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def image_grid(rows: Sequence[Sequence[torch.Tensor]], pad: int = 2,
               value_range=(-1.0, 1.0)) -> np.ndarray:
    """Rows of same-sized ``[3, H, W]`` images -> one ``H'×W'×3`` uint8
    array, with ``pad`` white pixels between tiles."""
    if not rows or not rows[0]:
        raise ValueError('image_grid needs at least one image')
    height, width = rows[0][0].shape[-2:]
    cols = max(len(r) for r in rows)
    grid = np.full((len(rows) * (height + pad) + pad,
                    cols * (width + pad) + pad, 3), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            if tuple(image.shape[-2:]) != (height, width):
                raise ValueError(f'image_grid: tile ({i}, {j}) is '
                                 f'{tuple(image.shape[-2:])}, expected '
                                 f'{(height, width)}')
            top, left = pad + i * (height + pad), pad + j * (width + pad)
            grid[top:top + height, left:left + width] = to_uint8(
                image, value_range)
    return grid
