"""The LLaVA dataset: an annotation file plus an image folder."""
import logging
import os
import os.path as osp
from typing import List, Optional, Sequence

import torch
from mmengine.logging import print_log
from PIL import Image
from torch.utils.data import Dataset

from dsvlm.constants import IGNORE_INDEX
from dsvlm.registry import DATASETS

from .annotations import (has_image, load_annotations,
                          normalize_conversations, sample_id)
from .errors import DataError, DataProblem
from .image_processing import (ASPECT_RATIOS, build_image_processor,
                               preprocess_image)
from .templates import get_template
from .tokenization import (ImageTruncatedError, SupervisionError,
                           tokenize_segments)
from .tokenizers import build_tokenizer


def image_path_problem(record) -> Optional[str]:
    """Why the record's image path is refused: an absolute path or one that
    climbs out of the image folder (``../``) would open a file anywhere."""
    if not has_image(record):
        return None
    path = record['image']
    if osp.isabs(path) or osp.normpath(path).split(os.sep)[0] == '..':
        return (f'image path {path!r} leaves the image folder; image paths '
                'are relative to it')
    return None


@DATASETS.register_module()
class LlavaDataset(Dataset):
    """LLaVA-format samples, read and tokenised lazily in ``__getitem__``.

    An item is ``dict(input_ids, labels, pixel_values, data_sample)``:
    ``input_ids``/``labels`` are LongTensors with ``IMAGE_TOKEN_INDEX`` at
    the image position and ``IGNORE_INDEX`` wherever the loss does not look;
    ``pixel_values`` is a FloatTensor ``[3, H, W]`` (None for text-only
    samples); ``data_sample`` has ``id``, ``index`` and ``image`` (the path),
    and in ``test_mode`` also ``prompt`` (the template's generation prompt)
    and ``gt_answer`` (the last assistant answer; labels are all ignored).

    Samples longer than ``max_length`` tokens are truncated; each is logged
    with its id and counted in ``num_truncated`` (per process: with
    dataloader workers every worker counts its own).  Bad records raise a
    :class:`DataError` on construction, unless ``skip_invalid`` (then they are
    left out, logged, and listed in ``problems``).  ``meta_keys`` names
    record fields copied into ``data_sample`` (e.g. ``question_type``, which
    a metric can group by).  ``cache_items`` keeps every item in memory
    after its first read, so later epochs neither decode images nor
    tokenise; for small datasets (the tiny world), as each dataloader
    worker holds a copy.
    """

    def __init__(self, ann_file, image_folder, tokenizer, image_processor,
                 template, max_length: int = 2048,
                 image_aspect_ratio: str = 'pad', test_mode: bool = False,
                 max_samples: Optional[int] = None,
                 skip_invalid: bool = False,
                 meta_keys: Sequence[str] = (),
                 cache_items: bool = False):
        if image_aspect_ratio not in ASPECT_RATIOS:
            raise ValueError(
                f'unknown image_aspect_ratio {image_aspect_ratio!r}; valid: '
                f'{", ".join(ASPECT_RATIOS)}')
        self.ann_file = str(ann_file)
        self.image_folder = image_folder
        self.tokenizer = build_tokenizer(tokenizer)
        self.image_processor = (None if image_processor is None else
                                build_image_processor(image_processor))
        self.template = get_template(template)
        self.max_length = max_length
        self.image_aspect_ratio = image_aspect_ratio
        self.test_mode = test_mode
        self.meta_keys = tuple(meta_keys)
        self._truncated_ids = set()
        self._modality_lengths = None
        self._cache = {} if cache_items else None

        ann = load_annotations(self.ann_file, skip_invalid=True)
        self.problems: List[DataProblem] = list(ann.problems)
        lines = ann.lines or [None] * len(ann.records)
        self._samples = []  # (record, index in file, line in file)
        for record, index, line in zip(ann.records, ann.indices, lines):
            kind, problem = self._record_problem(record)
            if problem:
                self.problems.append(DataProblem(
                    kind, self.ann_file, problem, line=line,
                    index=index, sample_id=sample_id(record, index)))
            else:
                self._samples.append((record, index, line))
        if self.problems and not skip_invalid:
            raise DataError(self.problems)
        if self.problems:
            print_log(f'{len(self.problems)} invalid records of '
                      f'{self.ann_file} skipped, e.g. {self.problems[0]}',
                      logger='current', level=logging.WARNING)
        if max_samples is not None:
            self._samples = self._samples[:max_samples]
        print_log(f'{type(self).__name__}: {len(self)} samples from '
                  f'{self.ann_file}', logger='current')

    def _record_problem(self, record):
        """``(kind, message)`` of what makes the record unusable here, or
        ``(None, None)``."""
        problem = self._template_problem(record)
        if problem:
            return 'bad_image_token', problem
        problem = image_path_problem(record)
        if problem:
            return 'bad_image_path', problem
        return None, None

    def _template_problem(self, record) -> Optional[str]:
        if not self.template.image_only_prompt:
            return None
        if not has_image(record):
            return f'the {self.template.name!r} template needs an image'
        if len(record['conversations']) != 2:
            return (f'the {self.template.name!r} template takes one '
                    'human/gpt round')
        return None

    @property
    def metainfo(self) -> dict:
        """MMEngine's dataset wrappers (``ConcatDataset``...) compare it."""
        return dict(template=self.template.name)

    def full_init(self) -> None:
        """MMEngine's wrappers call it; everything is loaded in
        ``__init__`` already."""

    def __len__(self) -> int:
        return len(self._samples)

    @property
    def num_truncated(self) -> int:
        """How many distinct samples this process truncated so far."""
        return len(self._truncated_ids)

    @property
    def modality_lengths(self) -> List[int]:
        """LLaVA's length proxy: words in all turns (at least 1), positive
        for image samples and negative for text-only ones."""
        if self._modality_lengths is None:
            self._modality_lengths = [
                self._word_count(r) * (1 if has_image(r) else -1)
                for r, _, _ in self._samples]
        return self._modality_lengths

    @property
    def lengths(self) -> List[int]:
        """LLaVA's ``lengths``: words, plus 128 for an image."""
        return [self._word_count(r) + (128 if has_image(r) else 0)
                for r, _, _ in self._samples]

    @staticmethod
    def _word_count(record) -> int:
        return max(1, sum(len(t['value'].split())
                          for t in record['conversations']))

    def _problem(self, idx, kind, message) -> DataProblem:
        record, index, line = self._samples[idx]
        return DataProblem(kind, self.ann_file, message, line=line,
                           index=index, sample_id=sample_id(record, index))

    def image_path(self, idx) -> Optional[str]:
        record = self._samples[idx][0]
        if not has_image(record):
            return None
        return osp.join(self.image_folder or '', record['image'])

    def load_image(self, idx) -> Image.Image:
        """The RGB image of sample ``idx``; DataError if missing/unreadable."""
        path = self.image_path(idx)
        if not osp.isfile(path):
            raise DataError([self._problem(
                idx, 'missing_image', f'image not found: {path}')])
        try:
            with Image.open(path) as image:
                return image.convert('RGB')
        except Exception as e:  # PIL raises many types for broken files
            raise DataError([self._problem(
                idx, 'unreadable_image',
                f'cannot read image {path}: {type(e).__name__}: {e}')]) from e

    def tokenize(self, idx):
        """``(TokenizedConversation, segments, gt_answer or None)``."""
        convs = normalize_conversations(self._samples[idx][0])
        gt_answer = None
        if self.test_mode:
            segments, gt_answer = self.template.generation_prompt(convs)
        else:
            segments = self.template.segments(convs)
        try:
            tokens = tokenize_segments(segments, self.tokenizer,
                                       self.template.add_bos, self.max_length)
        except ImageTruncatedError as e:
            raise DataError([self._problem(idx, 'over_length', str(e))]) from e
        except SupervisionError as e:
            raise DataError([self._problem(
                idx, 'unlocated_answer',
                f'{e} (template {self.template.name!r})')]) from e
        return tokens, segments, gt_answer

    def __getitem__(self, idx) -> dict:
        if self._cache is None:
            return self._load_item(idx)
        if idx not in self._cache:
            self._cache[idx] = self._load_item(idx)
        item = self._cache[idx]
        return dict(item, data_sample=dict(item['data_sample']))

    def _load_item(self, idx) -> dict:
        tokens, segments, gt_answer = self.tokenize(idx)
        record, index, _ = self._samples[idx]
        sid = sample_id(record, index)
        if tokens.truncated:
            self._log_truncation(idx, sid, tokens.num_tokens)
        pixel_values = None
        if has_image(record):
            if self.image_processor is None:
                raise ValueError(
                    f'sample {sid!r} of {self.ann_file} has an image but '
                    'the dataset has no image_processor')
            pixel_values = preprocess_image(self.load_image(idx),
                                            self.image_processor,
                                            self.image_aspect_ratio)
        labels = tokens.labels
        data_sample = dict(id=sid, index=idx, image=self.image_path(idx))
        data_sample.update((k, record[k]) for k in self.meta_keys if k in record)
        if self.test_mode:
            labels = [IGNORE_INDEX] * len(tokens.input_ids)
            data_sample.update(prompt=''.join(s.text for s in segments),
                               gt_answer=gt_answer)
        return dict(input_ids=torch.tensor(tokens.input_ids, dtype=torch.long),
                    labels=torch.tensor(labels, dtype=torch.long),
                    pixel_values=pixel_values, data_sample=data_sample)

    def check_sample(self, idx,
                     decode_image: bool = True) -> List[DataProblem]:
        """Every problem of sample ``idx`` (over length, missing or, with
        ``decode_image``, unreadable image), without raising."""
        problems = []
        try:
            tokens = self.tokenize(idx)[0]
            if tokens.truncated:
                problems.append(self._problem(
                    idx, 'over_length', f'{tokens.num_tokens} tokens > '
                    f'max_length={self.max_length} (would be truncated)'))
        except DataError as e:
            problems += e.problems
        path = self.image_path(idx)
        if path is not None:
            if decode_image:
                try:
                    self.load_image(idx)
                except DataError as e:
                    problems += e.problems
            elif not osp.isfile(path):
                problems.append(self._problem(idx, 'missing_image',
                                              f'image not found: {path}'))
        return problems

    def _log_truncation(self, idx, sid, num_tokens):
        if idx in self._truncated_ids:
            return
        self._truncated_ids.add(idx)
        print_log(f'sample {sid!r} of {self.ann_file} has {num_tokens} tokens '
                  f'> max_length={self.max_length}: truncated '
                  f'({self.num_truncated} samples truncated so far)',
                  logger='current', level=logging.WARNING)
