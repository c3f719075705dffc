"""Tokenising a conversation into ``input_ids`` and ``labels``.

The ids are those of the whole conversation string, as the official LLaVA
code (``conv.get_prompt()`` + ``tokenizer_image_token``), transformers'
``apply_chat_template`` and the evaluation toolkits produce them: the
string is split at ``<image>`` only, each piece is tokenised whole (a
SentencePiece tokenizer thus keeps ``questions. USER:`` as ``... ▁USER:``,
where piecewise tokenisation would leave a lone ``▁``), and each
``<image>`` becomes ``IMAGE_TOKEN_INDEX``.

Labels come from the characters: the template marks which characters are
supervised (answers and their end-of-turn strings), and a token is
supervised when it covers a supervised character (the convention of
transformers' assistant-token masks; a token that merges the end of a
prompt with the start of an answer is the answer's first token).  A
supervised span that ends inside a token, or that no token covers, cannot
be located: :class:`SupervisionError`, never a silently masked sample.
The tokenizer must return offsets (a "fast", ``tokenizers``-backed one).

Lengths are counted as the LLM sees them, after splicing: the image token
counts as the ``image_length`` feature vectors that replace it (576 for
CLIP-L/14 at 336 px).  Truncation keeps the first ``max_length`` of those
positions, here and only here: the model then checks that no spliced
sequence is longer (LLaVA truncates twice, counting the image as one token
in the dataset, and silently loses the end of long answers in the model).
It never cuts the image: a sample whose image would not fit whole raises
:class:`ImageTruncatedError`.
"""
from typing import List, NamedTuple, Optional, Sequence, Tuple

from dsvlm.constants import (DEFAULT_IMAGE_TOKEN, IGNORE_INDEX,
                             IMAGE_TOKEN_INDEX)

from .templates import Segment


class TokenizedConversation(NamedTuple):
    input_ids: List[int]
    labels: List[int]
    num_tokens: int  # spliced length before truncation
    truncated: bool
    num_supervised: int  # supervised tokens before truncation

    @property
    def num_supervised_kept(self) -> int:
        """Supervised tokens left after truncation."""
        return sum(label != IGNORE_INDEX for label in self.labels)


class SupervisionError(ValueError):
    """A supervised span of the text is not a whole number of tokens."""


class ImageTruncatedError(ValueError):
    """Truncation to ``max_length`` would cut the image token."""


def tokenize_text(text: str, tokenizer) -> List[int]:
    """Ids of ``text`` with ``IMAGE_TOKEN_INDEX`` for each ``<image>``."""
    return [i for i, _ in _tokens_with_offsets(text, tokenizer)]


def _tokens_with_offsets(text: str, tokenizer) -> List[Tuple[int, tuple]]:
    """``(id, (start, end))`` of every token of ``text``; each piece between
    ``<image>`` strings is tokenised whole; an image token covers its
    ``<image>`` string."""
    tokens, start = [], 0
    for k, piece in enumerate(text.split(DEFAULT_IMAGE_TOKEN)):
        if k:
            tokens.append((IMAGE_TOKEN_INDEX,
                           (start, start + len(DEFAULT_IMAGE_TOKEN))))
            start += len(DEFAULT_IMAGE_TOKEN)
        if piece:
            encoded = _encode_with_offsets(piece, tokenizer)
            tokens += [(i, (start + a, start + b))
                       for i, (a, b) in zip(encoded['input_ids'],
                                            encoded['offset_mapping'])]
        start += len(piece)
    return tokens


def _encode_with_offsets(text: str, tokenizer) -> dict:
    try:
        return tokenizer(text, add_special_tokens=False,
                         return_offsets_mapping=True)
    except NotImplementedError as e:  # python ("slow") tokenizers
        raise TypeError(
            f'{type(tokenizer).__name__} returns no character offsets; dsvlm '
            'locates the supervised tokens with them. Load a tokenizers-'
            'backed ("fast") tokenizer, e.g. AutoTokenizer.from_pretrained('
            'path) without use_fast=False.') from e


def supervised_spans(segments: Sequence[Segment]) -> List[Tuple[int, int]]:
    """Character spans ``[start, end)`` of the supervised segments in
    ``''.join(segment texts)``, adjacent ones merged."""
    spans, start = [], 0
    for text, supervised in segments:
        end = start + len(text)
        if supervised and text:
            if spans and spans[-1][1] == start:
                spans[-1] = (spans[-1][0], end)
            else:
                spans.append((start, end))
        start = end
    return spans


def _label_tokens(tokens, spans, text: str) -> List[int]:
    """Labels of ``tokens``: the id where the token covers a supervised
    character (SupervisionError where a span cannot be located)."""
    labels = [IGNORE_INDEX] * len(tokens)
    for span_start, span_end in spans:
        covering = [k for k, (_, (a, b)) in enumerate(tokens)
                    if (a < span_end and b > span_start)
                    or (a == b and span_start <= a < span_end)]
        if not covering:
            raise SupervisionError(
                f'no token covers the supervised text '
                f'{text[span_start:span_end]!r}')
        last_end = tokens[covering[-1]][1][1]
        if last_end > span_end:
            raise SupervisionError(
                f'the supervised text {text[span_start:span_end]!r} ends '
                f'inside the token {text[tokens[covering[-1]][1][0]:last_end]!r}'
                ', which runs on into unsupervised text; end the answer with '
                'a token boundary (a special end-of-turn token)')
        for k in covering:
            token_id = tokens[k][0]
            if token_id != IMAGE_TOKEN_INDEX:
                labels[k] = token_id
    return labels


def tokenize_segments(segments: Sequence[Segment], tokenizer,
                      add_bos: bool = False,
                      max_length: Optional[int] = None,
                      image_length: int = 1) -> TokenizedConversation:
    """``input_ids`` and ``labels`` of the conversation the segments write
    (see the module doc).  The BOS token is prepended when ``add_bos`` and
    the tokenizer has one.  ``max_length`` counts spliced positions: each
    image token as ``image_length``."""
    text = ''.join(s.text for s in segments)
    tokens = _tokens_with_offsets(text, tokenizer)
    labels = _label_tokens(tokens, supervised_spans(segments), text)
    input_ids = [i for i, _ in tokens]
    if add_bos and tokenizer.bos_token_id is not None:
        input_ids.insert(0, tokenizer.bos_token_id)
        labels.insert(0, IGNORE_INDEX)
    num_supervised = sum(label != IGNORE_INDEX for label in labels)
    ends = _spliced_ends(input_ids, image_length)
    num_tokens = ends[-1] if ends else 0
    truncated = max_length is not None and num_tokens > max_length
    if truncated:
        keep = sum(end <= max_length for end in ends)
        if IMAGE_TOKEN_INDEX in input_ids[keep:]:
            position = input_ids.index(IMAGE_TOKEN_INDEX)
            raise ImageTruncatedError(
                f'max_length={max_length} would cut the image (its '
                f'{image_length} positions start at '
                f'{ends[position] - image_length} of the {num_tokens} after '
                'splicing); raise max_length')
        input_ids, labels = input_ids[:keep], labels[:keep]
    return TokenizedConversation(input_ids, labels, num_tokens, truncated,
                                 num_supervised)


def _spliced_ends(input_ids: Sequence[int], image_length: int) -> List[int]:
    """Where each token ends in the spliced sequence (exclusive)."""
    ends, end = [], 0
    for token_id in input_ids:
        end += image_length if token_id == IMAGE_TOKEN_INDEX else 1
        ends.append(end)
    return ends
