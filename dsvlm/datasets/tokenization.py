"""Tokenising template segments into ``input_ids`` and ``labels``.

Each segment is tokenised on its own with ``add_special_tokens=False`` (as
XTuner does), so the supervised span is exact whatever the tokenizer; the
template puts segment boundaries where tokenizers split words anyway.
``<image>`` becomes ``IMAGE_TOKEN_INDEX`` with an ``IGNORE_INDEX`` label.

Truncation keeps the first ``max_length`` tokens.  It never drops the image
token: a sample whose image token would fall beyond ``max_length`` raises a
:class:`ValueError` (its image could not be seen, so the sample is broken).
``max_length`` counts text tokens; the image counts as one token here, and
the model truncates again after splicing the image features (as LLaVA).
"""
from typing import List, NamedTuple, Optional, Sequence

from dsvlm.constants import (DEFAULT_IMAGE_TOKEN, IGNORE_INDEX,
                             IMAGE_TOKEN_INDEX)

from .templates import Segment


class TokenizedConversation(NamedTuple):
    input_ids: List[int]
    labels: List[int]
    num_tokens: int  # length before truncation
    truncated: bool


def tokenize_text(text: str, tokenizer) -> List[int]:
    """Ids of ``text`` with ``IMAGE_TOKEN_INDEX`` for each ``<image>``."""
    ids: List[int] = []
    for k, chunk in enumerate(text.split(DEFAULT_IMAGE_TOKEN)):
        if k:
            ids.append(IMAGE_TOKEN_INDEX)
        if chunk:
            ids.extend(tokenizer.encode(chunk, add_special_tokens=False))
    return ids


def tokenize_segments(segments: Sequence[Segment], tokenizer,
                      add_bos: bool = False,
                      max_length: Optional[int] = None
                      ) -> TokenizedConversation:
    """``input_ids`` and ``labels`` of the segments (see module doc).

    The BOS token is prepended when ``add_bos`` and the tokenizer has one.
    """
    input_ids: List[int] = []
    labels: List[int] = []
    if add_bos and tokenizer.bos_token_id is not None:
        input_ids.append(tokenizer.bos_token_id)
        labels.append(IGNORE_INDEX)
    for text, supervised in segments:
        ids = tokenize_text(text, tokenizer)
        input_ids.extend(ids)
        labels.extend(i if supervised and i != IMAGE_TOKEN_INDEX
                      else IGNORE_INDEX for i in ids)
    num_tokens = len(input_ids)
    truncated = max_length is not None and num_tokens > max_length
    if truncated:
        if IMAGE_TOKEN_INDEX in input_ids[max_length:]:
            raise ValueError(
                f'max_length={max_length} would cut the image token (at '
                f'position {input_ids.index(IMAGE_TOKEN_INDEX)} of '
                f'{num_tokens} tokens); raise max_length')
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return TokenizedConversation(input_ids, labels, num_tokens, truncated)
