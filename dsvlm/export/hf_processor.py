"""The exported processor: tokenizer, image processor and chat template that
reproduce the training pipeline's ids and pixels under plain transformers.

* Tokenizer: the training tokenizer plus ``<image>`` as a special token
  (transformers' LLaVA expands it to one token per image feature), adding
  the BOS token exactly when the training template does.
* Image processor: transformers' ``LlavaImageProcessor`` (PIL backend, as
  LLaVA's own slow processor) with the training processor's resize, crop
  and normalisation, and ``do_pad`` for ``image_aspect_ratio='pad'``: it pads
  to a square in ``int(255 * image_mean)``, centred, as LLaVA's
  ``expand2square``.
* Chat template: :func:`~dsvlm.export.chat_template.chat_template`.
"""
import copy
from typing import Tuple

from tokenizers import AddedToken

from dsvlm.constants import DEFAULT_IMAGE_TOKEN
from dsvlm.datasets.templates import ConversationTemplate
from dsvlm.datasets.tokenization import tokenize_text

from .chat_template import chat_template

# Texts that follow ``<image>`` in a training prompt: the newline that
# LLaVA puts after the image, then a question.
_SUFFIX_PROBES = ('\nWhat is in the image?', '\nDescribe it.\nIn detail.')
_SUFFIX_CANDIDATES = ('', ' ')


def export_tokenizer(tokenizer, template: ConversationTemplate
                     ) -> Tuple[object, int]:
    """A copy of ``tokenizer`` with ``<image>`` (returns it and the image
    token id) that adds BOS iff ``template.add_bos``."""
    tokenizer = copy.deepcopy(tokenizer)
    if not hasattr(tokenizer, 'add_bos_token'):
        raise TypeError(
            f'{type(tokenizer).__name__} is not a tokenizers-backed '
            '("fast") tokenizer; the export needs one')
    if DEFAULT_IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens(
            {'extra_special_tokens': [AddedToken(
                DEFAULT_IMAGE_TOKEN, special=True, normalized=False,
                lstrip=False, rstrip=False)]},
            replace_extra_special_tokens=False)
    image_token_id = tokenizer.convert_tokens_to_ids(DEFAULT_IMAGE_TOKEN)
    if template.add_bos and tokenizer.bos_token is None:
        raise ValueError(f'the {template.name!r} template starts with BOS '
                         'but the tokenizer has no bos_token')
    if _adds_bos(tokenizer) != template.add_bos or _adds_eos(tokenizer):
        # rewrites the post-processor: only where it must change
        tokenizer.add_eos_token = False
        tokenizer.add_bos_token = template.add_bos
    if _adds_bos(tokenizer) != template.add_bos or _adds_eos(tokenizer):
        raise ValueError(f'{type(tokenizer).__name__}: cannot make it add '
                         f'BOS={template.add_bos} and no EOS')
    return tokenizer, image_token_id


def _adds_bos(tokenizer) -> bool:
    ids = tokenizer('a')['input_ids']
    return tokenizer.bos_token_id is not None and \
        ids[:1] == [tokenizer.bos_token_id]


def _adds_eos(tokenizer) -> bool:
    ids = tokenizer('a')['input_ids']
    return tokenizer.eos_token_id is not None and \
        ids[-1:] == [tokenizer.eos_token_id]


def image_token_suffix(tokenizer) -> str:
    """What to write between ``<image>`` and the text after it so that
    transformers tokenises that text as the training pipeline does (a
    string of its own): ``''`` for byte-level BPE, ``' '`` for SentencePiece
    with ``prepend_scheme='first'``.  ``tokenizer`` holds ``<image>``."""
    image_id = tokenizer.convert_tokens_to_ids(DEFAULT_IMAGE_TOKEN)
    for suffix in _SUFFIX_CANDIDATES:
        if all(_tokenized_after_image(tokenizer, probe, suffix, image_id) ==
               tokenize_text(probe, tokenizer) for probe in _SUFFIX_PROBES):
            return suffix
    raise ValueError(
        f'{type(tokenizer).__name__}: no text between <image> and the '
        f'question (tried {list(_SUFFIX_CANDIDATES)}) makes transformers '
        'tokenise the question as training did; this tokenizer cannot be '
        'exported with exact ids')


def _tokenized_after_image(tokenizer, text, suffix, image_id):
    ids = tokenizer(DEFAULT_IMAGE_TOKEN + suffix + text,
                    add_special_tokens=False)['input_ids']
    if not ids or ids[0] != image_id:
        return None
    return ids[1:]


# LlavaImageProcessor settings copied from the training processor
_PROCESSOR_FIELDS = ('do_resize', 'size', 'resample', 'do_center_crop',
                     'crop_size', 'do_rescale', 'rescale_factor',
                     'do_normalize', 'image_mean', 'image_std',
                     'do_convert_rgb')


def llava_image_processor(processor, aspect_ratio: str = 'pad'):
    """transformers' LLaVA image processor (PIL backend) doing what
    :func:`~dsvlm.datasets.image_processing.preprocess_image` does with
    ``processor`` and ``aspect_ratio``."""
    from transformers import LlavaImageProcessorPil
    if aspect_ratio not in ('pad', 'original'):
        raise ValueError(f'image_aspect_ratio={aspect_ratio!r} cannot be '
                         "exported; valid: 'pad', 'original'")
    fields = {k: _plain(getattr(processor, k)) for k in _PROCESSOR_FIELDS
              if getattr(processor, k, None) is not None}
    fields.setdefault('do_center_crop', False)
    return LlavaImageProcessorPil(do_pad=aspect_ratio == 'pad', **fields)


def _plain(value):
    """SizeDicts and enums as the plain values processors take."""
    if hasattr(value, 'items'):
        return {k: v for k, v in value.items() if v is not None}
    if hasattr(value, 'value') and not isinstance(value, (int, float)):
        return value.value
    return value


def build_llava_processor(tokenizer, image_processor, template,
                          aspect_ratio: str, patch_size: int,
                          select_strategy: str, num_additional_tokens: int):
    """The ``LlavaProcessor`` of an export; returns ``(processor,
    image_token_id)``."""
    from transformers import LlavaProcessor
    tokenizer, image_token_id = export_tokenizer(tokenizer, template)
    template_text = chat_template(template, image_token_suffix(tokenizer))
    # the tokenizer renders the same (lmms-eval's llava_hf asks it)
    tokenizer.chat_template = template_text
    return LlavaProcessor(
        image_processor=llava_image_processor(image_processor, aspect_ratio),
        tokenizer=tokenizer, patch_size=patch_size,
        vision_feature_select_strategy=select_strategy,
        chat_template=template_text, image_token=DEFAULT_IMAGE_TOKEN,
        num_additional_image_tokens=num_additional_tokens), image_token_id
