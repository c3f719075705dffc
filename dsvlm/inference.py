"""Answering questions about images with a trained :class:`LlavaModel`.

Each (image, question) pair becomes the sample that :class:`LlavaDataset`
builds in test mode from the record ``{"image": ..., "conversations":
[{"from": "human", "value": "<image>\\n" + question}, {"from": "gpt",
"value": ""}]}`` (no image and no ``<image>`` for a text-only question):
the same conversation normalisation, generation prompt, tokenisation,
image preprocessing and collation, then the data preprocessor and
``model.predict`` (greedy, left-padded), as ``tools/test.py`` runs them::

    inferencer = Inferencer(model, model.image_processor_cfg, model.template)
    inferencer.answer([(Image.open('cat.jpg'), 'What is this?'),
                       (None, 'What is 2 + 2?')])
"""
from typing import List, Optional, Sequence, Tuple

import torch
from PIL import Image

from dsvlm.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX
from dsvlm.datasets.annotations import normalize_conversations
from dsvlm.datasets.collate import llava_collate
from dsvlm.datasets.image_processing import (ASPECT_RATIOS,
                                             build_image_processor,
                                             preprocess_image)
from dsvlm.datasets.templates import GPT, HUMAN, get_template
from dsvlm.datasets.tokenization import tokenize_segments

Question = Tuple[Optional[Image.Image], str]


class Inferencer:
    """Turns ``(PIL image or None, question)`` pairs into answers.

    Args:
        model: a :class:`~dsvlm.models.LlavaModel` with a tokenizer, in eval
            mode on its device (see :func:`dsvlm.export.build_for_export`).
        image_processor_cfg: the data pipeline's image processor (config or
            instance; ``model.image_processor_cfg``).
        template: the conversation template (``model.template``).
        image_aspect_ratio: ``'pad'`` or ``'original'``, as the model was
            trained (:func:`dsvlm.export.export.image_aspect_ratio`).
        batch_size: questions per ``predict`` call.
        max_length: positions kept, the image counting as the model's
            ``num_image_tokens`` (default ``model.max_length``).
    """

    def __init__(self, model, image_processor_cfg, template,
                 image_aspect_ratio: str = 'pad', batch_size: int = 8,
                 max_length: Optional[int] = None):
        if image_aspect_ratio not in ASPECT_RATIOS:
            raise ValueError(
                f'unknown image_aspect_ratio {image_aspect_ratio!r}; valid: '
                f'{", ".join(ASPECT_RATIOS)}')
        if batch_size < 1:
            raise ValueError(f'batch_size must be >= 1, got {batch_size}')
        if model.tokenizer is None:
            raise ValueError('the model has no tokenizer: set `tokenizer` in '
                             'the config')
        self.model = model
        self.image_processor = (None if image_processor_cfg is None else
                                build_image_processor(image_processor_cfg))
        self.template = get_template(template)
        self.image_aspect_ratio = image_aspect_ratio
        self.batch_size = batch_size
        self.max_length = (model.max_length if max_length is None
                           else max_length)
        self.image_length = getattr(model, 'num_image_tokens', None) or 1

    def build_item(self, image: Optional[Image.Image], question: str,
                   sample_id=None) -> dict:
        """The item :class:`LlavaDataset` gives in test mode for the record
        of ``question`` (about ``image``, or text-only when None)."""
        if not isinstance(question, str):
            raise TypeError('a question must be a str, got '
                            f'{type(question).__name__}')
        if image is None and DEFAULT_IMAGE_TOKEN in question:
            raise ValueError(f'question {sample_id!r} has '
                             f'{DEFAULT_IMAGE_TOKEN} but no image')
        if image is None and self.template.image_only_prompt:
            raise ValueError(f'the {self.template.name!r} template needs an '
                             f'image; question {sample_id!r} has none')
        if image is not None:
            question = DEFAULT_IMAGE_TOKEN + '\n' + question
        record = dict(conversations=[{'from': HUMAN, 'value': question},
                                     {'from': GPT, 'value': ''}])
        if image is not None:
            record['image'] = getattr(image, 'filename', None) or '<image>'
        segments, _ = self.template.generation_prompt(
            normalize_conversations(record))
        try:
            tokens = tokenize_segments(segments, self.model.tokenizer,
                                       self.template.add_bos, self.max_length,
                                       image_length=self.image_length)
        except ValueError as e:  # the image token beyond max_length
            raise ValueError(f'question {sample_id!r}: {e}') from e
        pixel_values = None
        if image is not None:
            if self.image_processor is None:
                raise ValueError('an image was given but the model has no '
                                 'image processor config')
            pixel_values = preprocess_image(image, self.image_processor,
                                            self.image_aspect_ratio)
        input_ids = torch.tensor(tokens.input_ids, dtype=torch.long)
        return dict(input_ids=input_ids,
                    labels=torch.full_like(input_ids, IGNORE_INDEX),
                    pixel_values=pixel_values,
                    data_sample=dict(
                        id=sample_id, image=record.get('image'),
                        prompt=''.join(s.text for s in segments)))

    @torch.no_grad()
    def answer(self, questions: Sequence[Question],
               ids: Optional[Sequence] = None) -> List[str]:
        """The answer to each ``(image or None, question)``, in order.
        ``ids`` name the questions in errors (default: their positions)."""
        questions = list(questions)
        ids = list(range(len(questions))) if ids is None else list(ids)
        if len(ids) != len(questions):
            raise ValueError(f'{len(ids)} ids for {len(questions)} questions')
        answers = []
        for start in range(0, len(questions), self.batch_size):
            stop = start + self.batch_size
            items = [self.build_item(image, question, sample_id)
                     for (image, question), sample_id in
                     zip(questions[start:stop], ids[start:stop])]
            answers += self._predict(items)
        return answers

    def _predict(self, items: List[dict]) -> List[str]:
        batch = llava_collate(items,
                              pad_token_id=self.model.tokenizer.pad_token_id)
        data = self.model.data_preprocessor(batch, False)
        samples = self.model.predict(data['inputs'], data['data_samples'])
        return [sample['pred_answer'] for sample in samples]

