"""Image processors built from configs, and LLaVA's image preprocessing.

The HF image processor of the chosen encoder does the resizing and
normalisation; ``aspect_ratio='pad'`` first pads the image to a square in
the processor's mean colour (LLaVA-1.5's ``expand2square``).  Processors use
transformers' PIL backend (LLaVA's slow ``CLIPImageProcessor``; no
torchvision needed).
"""
import os.path as osp

import torch
from PIL import Image
from transformers.image_utils import OPENAI_CLIP_MEAN as _OPENAI_CLIP_MEAN
from transformers.image_utils import OPENAI_CLIP_STD as _OPENAI_CLIP_STD

from dsvlm.registry import FUNCTIONS
from ._cache import build_cached

OPENAI_CLIP_MEAN = tuple(_OPENAI_CLIP_MEAN)
OPENAI_CLIP_STD = tuple(_OPENAI_CLIP_STD)
ASPECT_RATIOS = ('pad', 'original')

_PROCESSORS: dict = {}


def build_image_processor(cfg):
    """The image processor of ``cfg`` (an instance is returned as is)."""
    return build_cached(cfg, _PROCESSORS, 'image processor')


@FUNCTIONS.register_module()
def pretrained_image_processor(path, backend='pil', **kwargs):
    """``AutoImageProcessor.from_pretrained(path)`` from a local directory."""
    from transformers import AutoImageProcessor
    if not osp.isdir(path):
        raise FileNotFoundError(
            f'image processor directory not found: {path} (set it in the '
            'config or with --cfg-options image_processor.path=DIR)')
    kwargs.setdefault('local_files_only', True)
    # a directory's custom code runs only if the config asks for it
    kwargs.setdefault('trust_remote_code', False)
    return AutoImageProcessor.from_pretrained(path, backend=backend, **kwargs)


@FUNCTIONS.register_module()
def clip_image_processor(image_size, mean=OPENAI_CLIP_MEAN,
                         std=OPENAI_CLIP_STD):
    """A CLIP processor (shortest-edge resize, centre crop to ``image_size``,
    normalisation) built from arguments, for tiny and test configs."""
    try:
        from transformers import CLIPImageProcessorPil as processor_cls
    except ImportError:  # transformers < 5
        from transformers import CLIPImageProcessor as processor_cls
    return processor_cls(
        size={'shortest_edge': image_size},
        crop_size={'height': image_size, 'width': image_size},
        image_mean=list(mean), image_std=list(std))


def expand2square(image: Image.Image, background) -> Image.Image:
    """Pad ``image`` to a square, centred, filled with ``background`` RGB."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    result = Image.new(image.mode, (side, side), background)
    result.paste(image, ((side - width) // 2, (side - height) // 2))
    return result


def preprocess_image(image: Image.Image, processor,
                     aspect_ratio: str = 'pad') -> torch.Tensor:
    """``image`` as the encoder's float tensor ``[3, H, W]``."""
    if aspect_ratio not in ASPECT_RATIOS:
        raise ValueError(f'unknown image_aspect_ratio {aspect_ratio!r}; '
                         f'valid: {", ".join(ASPECT_RATIOS)}')
    image = image.convert('RGB')
    if aspect_ratio == 'pad':
        background = tuple(int(x * 255) for x in processor.image_mean)
        image = expand2square(image, background)
    pixel_values = processor(images=image, return_tensors='pt')['pixel_values']
    return torch.as_tensor(pixel_values[0], dtype=torch.float32)
