"""Splice image features into the token embeddings (LLaVA semantics).

Each sample's ``input_ids`` hold ``IMAGE_TOKEN_INDEX`` where its image goes;
that one position becomes the image's ``N`` feature vectors, whose labels
are ``IGNORE_INDEX``.  Text-only samples pass through unchanged.
"""
from typing import Callable, List, NamedTuple, Optional

import torch
from torch import Tensor

from dsvlm.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX


class SplicedInputs(NamedTuple):
    inputs_embeds: Tensor  # [B, L, D]
    attention_mask: Tensor  # [B, L] bool
    labels: Optional[Tensor]  # [B, L] or None


def splice_image_features(embed_tokens: Callable[[Tensor], Tensor],
                          input_ids: Tensor,
                          attention_mask: Tensor,
                          image_features: Optional[Tensor],
                          has_image: Optional[Tensor],
                          labels: Optional[Tensor] = None,
                          max_length: Optional[int] = None,
                          padding_side: str = 'right',
                          sample_ids: Optional[List] = None) -> SplicedInputs:
    """Build the LLM inputs of a batch.

    Args:
        embed_tokens: the LLM's input embedding.
        input_ids: ``[B, T]`` padded token ids with ``IMAGE_TOKEN_INDEX``.
        attention_mask: ``[B, T]``, True on real tokens.
        image_features: ``[B, N, D]`` connector output (rows of text-only
            samples are ignored), or None if no sample has an image.
        has_image: ``[B]`` bool.
        labels: ``[B, T]`` or None (prediction).
        max_length: the longest spliced sequence allowed.  The dataset
            truncates, counting the image as its features
            (``num_image_tokens``); a longer sequence here means the two
            disagree, and is an error naming the sample (truncating again
            would drop supervised tokens without a word).
        padding_side: ``'right'`` for training, ``'left'`` for generation.
        sample_ids: names of the samples, for error messages.
    """
    if padding_side not in ('left', 'right'):
        raise ValueError(f"padding_side must be 'left' or 'right', "
                         f'got {padding_side!r}')
    attention_mask = attention_mask.bool()
    is_image = input_ids == IMAGE_TOKEN_INDEX
    text_embeds = embed_tokens(input_ids.masked_fill(is_image, 0))
    embeds_rows, label_rows = [], []
    for b in range(input_ids.shape[0]):
        keep = attention_mask[b]
        ids, embeds = input_ids[b][keep], text_embeds[b][keep]
        row_labels = labels[b][keep] if labels is not None else None
        positions = (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
        wants_image = bool(has_image[b]) if has_image is not None else False
        _check_image_tokens(positions, wants_image, b, sample_ids)
        if positions:
            p = positions[0]
            feats = image_features[b].to(embeds.dtype)
            embeds = torch.cat([embeds[:p], feats, embeds[p + 1:]])
            if row_labels is not None:
                ignore = row_labels.new_full((feats.shape[0], ), IGNORE_INDEX)
                row_labels = torch.cat([row_labels[:p], ignore,
                                        row_labels[p + 1:]])
        if max_length is not None and len(embeds) > max_length:
            raise ValueError(_over_length_message(
                b, sample_ids, len(embeds), max_length,
                len(image_features[b]) if positions else None))
        embeds_rows.append(embeds)
        label_rows.append(row_labels)
    return _pad(embeds_rows, label_rows, padding_side,
                with_labels=labels is not None)


def _over_length_message(b, sample_ids, length, max_length, num_features):
    name = sample_ids[b] if sample_ids else f'batch row {b}'
    why = ''
    if num_features is not None:
        why = (f' with its {num_features} image features; the dataset '
               'truncates to max_length counting the image as '
               '`num_image_tokens` features: set num_image_tokens='
               f'{num_features} in the config')
    return (f'sample {name} is {length} tokens long after splicing > '
            f'max_length={max_length}{why}')


def _check_image_tokens(positions, wants_image, b, sample_ids):
    name = sample_ids[b] if sample_ids else f'batch row {b}'
    if len(positions) > 1:
        raise ValueError(f'sample {name}: {len(positions)} image tokens; one '
                         'image per sample is supported')
    if wants_image and not positions:
        raise ValueError(f'sample {name} has an image but no image token in '
                         'its input_ids (was it truncated away?)')
    if positions and not wants_image:
        raise ValueError(f'sample {name} has an image token but no image')


def _pad(embeds_rows, label_rows, padding_side, with_labels):
    batch, length = len(embeds_rows), max(len(e) for e in embeds_rows)
    first = embeds_rows[0]
    embeds = first.new_zeros((batch, length, first.shape[-1]))
    mask = torch.zeros((batch, length), dtype=torch.bool, device=first.device)
    labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long,
                        device=first.device) if with_labels else None
    for b, row in enumerate(embeds_rows):
        n = len(row)
        span = slice(0, n) if padding_side == 'right' else slice(length - n,
                                                                  length)
        embeds[b, span] = row
        mask[b, span] = True
        if with_labels:
            labels[b, span] = label_rows[b]
    return SplicedInputs(embeds, mask, labels)
