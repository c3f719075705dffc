"""Batching LLaVA items (``collate_fn=dict(type='llava_collate')``)."""
from typing import List, Sequence

import torch
from mmengine.registry import FUNCTIONS as MMENGINE_FUNCTIONS

from dsvlm.constants import IGNORE_INDEX
from dsvlm.registry import FUNCTIONS


# MMEngine's Runner looks ``collate_fn`` up with ``mmengine.FUNCTIONS.get``,
# which ignores the default scope, so the root registry gets it too:
# ``collate_fn=dict(type='llava_collate')`` then works (after the dataset,
# built first, has imported this package).
@MMENGINE_FUNCTIONS.register_module()
@FUNCTIONS.register_module()
def llava_collate(batch: Sequence[dict], pad_token_id: int = 0) -> dict:
    """Right-pad and stack :class:`LlavaDataset` items.

    Returns ``dict(inputs=dict(input_ids, attention_mask, labels,
    pixel_values, has_image), data_samples=[...])``.  ``input_ids`` are
    padded with ``pad_token_id`` and ``labels`` with ``IGNORE_INDEX``;
    ``attention_mask`` is bool.  A text-only sample gets zero
    ``pixel_values`` shaped like the batch's images and ``has_image=False``;
    a batch without any image has ``pixel_values=None``.
    """
    max_len = max(len(item['input_ids']) for item in batch)
    input_ids = torch.full((len(batch), max_len), pad_token_id,
                           dtype=torch.long)
    labels = torch.full((len(batch), max_len), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), max_len), dtype=torch.bool)
    for row, item in enumerate(batch):
        n = len(item['input_ids'])
        input_ids[row, :n] = item['input_ids']
        labels[row, :n] = item['labels']
        attention_mask[row, :n] = True
    images: List = [item.get('pixel_values') for item in batch]
    has_image = torch.tensor([img is not None for img in images])
    pixel_values = None
    if has_image.any():
        like = next(img for img in images if img is not None)
        pixel_values = torch.stack(
            [img if img is not None else torch.zeros_like(like)
             for img in images])
    return dict(
        inputs=dict(input_ids=input_ids, attention_mask=attention_mask,
                    labels=labels, pixel_values=pixel_values,
                    has_image=has_image),
        data_samples=[item.get('data_sample') for item in batch])
