"""The tiny shapes world as a LLaVA dataset, generated on first use."""
from pathlib import Path
from typing import Optional

from dsvlm.registry import DATASETS
from ..llava_dataset import LlavaDataset
from .shapes import IMAGE_FOLDER, ensure_shapes_world

SPLITS = dict(pretrain='pretrain.json', instruct='instruct.json',
              test='test.json')


@DATASETS.register_module()
class ShapesWorldDataset(LlavaDataset):
    """One split of the shapes world at ``data_root``.

    The world is generated deterministically from ``world`` (parameters of
    :func:`generate_shapes_world`) the first time it is needed; later runs
    reuse it, and a world generated with other parameters is an error.

    Args:
        data_root: where the world lives (e.g. ``data/tiny_shapes``).
        split: ``'pretrain'`` (captions), ``'instruct'`` (questions) or
            ``'test'`` (held-out questions, one per image).
        world: world parameters.
        **kwargs: :class:`LlavaDataset` arguments (tokenizer, template...).
    """

    def __init__(self, data_root: str, split: str,
                 world: Optional[dict] = None, **kwargs):
        if split not in SPLITS:
            raise ValueError(f'ShapesWorldDataset split={split!r}; choose '
                             f'one of {", ".join(SPLITS)}')
        root = Path(ensure_shapes_world(data_root, **(world or {})))
        kwargs.setdefault('meta_keys', ('question_type', ))
        super().__init__(ann_file=root / SPLITS[split],
                         image_folder=str(root / IMAGE_FOLDER), **kwargs)
