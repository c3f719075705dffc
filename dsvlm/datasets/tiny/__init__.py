"""The tiny shapes world: a synthetic LLaVA-format dataset and a local
tokenizer, generated deterministically on first use, so that the whole
platform trains on a CPU with no downloads."""
from .dataset import ShapesWorldDataset
from .shapes import (DEFAULT_PARAMS, ensure_shapes_world,
                     generate_shapes_world, load_world_meta)
from .tokenizer import build_tiny_tokenizer, tiny_tokenizer

__all__ = [
    'ShapesWorldDataset', 'DEFAULT_PARAMS', 'ensure_shapes_world',
    'generate_shapes_world', 'load_world_meta', 'build_tiny_tokenizer',
    'tiny_tokenizer'
]
