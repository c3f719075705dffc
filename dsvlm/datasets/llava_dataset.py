"""The LLaVA dataset: an annotation file plus an image folder."""
import logging
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
from .bad_samples import build_bad_sample_policy
from .errors import DataError, DataProblem
from .image_loading import (MAX_ASPECT_RATIO, MAX_PIXELS, ImageProblem,
                            load_rgb_image)
from .image_processing import (ASPECT_RATIOS, build_image_processor,
                               preprocess_image)
from .record_checks import record_problem
from .templates import get_template
from .tokenization import (ImageTruncatedError, SupervisionError,
                           tokenize_segments)
from .tokenizers import build_tokenizer


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

    ``max_length`` counts what the LLM sees: text tokens plus
    ``num_image_tokens`` features for the image (1 if None).  Longer samples
    are truncated here, once (the model checks it never has to); each is
    logged with its id and counted in ``num_truncated`` (per process: with
    dataloader workers every worker counts its own).  A training sample left
    without a supervised token is a :class:`DataError` (``no_supervision``).
    Bad records raise a :class:`DataError` on construction, unless
    ``skip_invalid`` (then they are left out, logged, and listed in
    ``problems``).  ``bad_samples`` (a :class:`BadSamplePolicy` config)
    says what a sample that fails while the run reads it does: stop the run
    (default) or be recorded and replaced by the next usable sample
    (``policy='skip'``, which also skips invalid records).  ``meta_keys`` names
    record fields copied into ``data_sample`` (e.g. ``question_type``, which
    a metric can group by).  ``cache_items`` keeps every item in memory
    after its first read, so later epochs neither decode images nor
    tokenise; for small datasets (the tiny world), as each dataloader
    worker holds a copy.  Images load through :func:`load_rgb_image`:
    ``max_image_pixels`` (counted on the padded square under
    ``image_aspect_ratio='pad'``) and ``max_aspect_ratio`` refuse images
    that would exhaust memory or lose their content (None: no limit).
    """

    def __init__(self, ann_file, image_folder, tokenizer, image_processor,
                 template, max_length: int = 2048,
                 num_image_tokens: Optional[int] = None,
                 image_aspect_ratio: str = 'pad', test_mode: bool = False,
                 max_samples: Optional[int] = None,
                 skip_invalid: bool = False,
                 meta_keys: Sequence[str] = (),
                 cache_items: bool = False,
                 bad_samples: Optional[dict] = None,
                 max_image_pixels: Optional[int] = MAX_PIXELS,
                 max_aspect_ratio: Optional[float] = MAX_ASPECT_RATIO):
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
        self.num_image_tokens = num_image_tokens
        self.max_image_pixels = max_image_pixels
        self.max_aspect_ratio = max_aspect_ratio
        self.bad_samples = build_bad_sample_policy(bad_samples)
        if self.bad_samples.skips and test_mode:
            raise ValueError(
                f'{self.ann_file}: a test_mode dataset cannot skip samples '
                "(a replacement would be scored in its place); use "
                "bad_samples=dict(policy='stop')")
        skip_invalid = skip_invalid or self.bad_samples.skips
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
            kind, problem = record_problem(record, self.template)
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
        if self.problems and self.bad_samples.skips:
            self.bad_samples.handle(DataError(self.problems),
                                    len(self._samples) + len(self.problems))
        if max_samples is not None:
            self._samples = self._samples[:max_samples]
        print_log(f'{type(self).__name__}: {len(self)} samples from '
                  f'{self.ann_file}', logger='current')

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
        """The RGB image of sample ``idx`` (:func:`load_rgb_image`: 16-bit
        and float images rescaled, the pixel budget and aspect-ratio limit,
        corrupt JPEG data); DataError naming the sample otherwise."""
        path = self.image_path(idx)
        if not osp.isfile(path):
            raise DataError([self._problem(
                idx, 'missing_image', f'image not found: {path}')])
        try:
            return load_rgb_image(
                path, max_pixels=self.max_image_pixels,
                max_aspect_ratio=self.max_aspect_ratio,
                padded_to_square=self.image_aspect_ratio == 'pad')
        except ImageProblem as e:
            raise DataError([self._problem(idx, e.kind, e.message)]) from e

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
                                       self.template.add_bos, self.max_length,
                                       image_length=self.image_length)
        except ImageTruncatedError as e:
            raise DataError([self._problem(idx, 'over_length', str(e))]) from e
        except SupervisionError as e:
            raise DataError([self._problem(
                idx, 'unlocated_answer',
                f'{e} (template {self.template.name!r})')]) from e
        if not self.test_mode and not tokens.num_supervised_kept:
            raise DataError([self._problem(
                idx, 'no_supervision', self._no_supervision_reason(tokens))])
        return tokens, segments, gt_answer

    @property
    def image_length(self) -> int:
        """Positions an image takes in the LLM's sequence."""
        return self.num_image_tokens or 1

    def over_length(self, num_tokens: int) -> str:
        """How a sample of ``num_tokens`` (after splicing) exceeds
        ``max_length``, for messages."""
        return (f'{num_tokens} tokens after splicing (image: '
                f'{self.image_length}) > max_length={self.max_length}')

    def _no_supervision_reason(self, tokens) -> str:
        if not tokens.num_supervised:
            return 'no supervised token (every answer is empty)'
        return (f'{self.over_length(tokens.num_tokens)}: truncation cuts all '
                f'{tokens.num_supervised} supervised tokens')

    def __getitem__(self, idx) -> dict:
        """Item ``idx``; under ``bad_samples.policy='skip'`` a sample that
        fails is recorded and the next usable one is given instead."""
        policy = self.bad_samples
        tries = 0
        for candidate in self._replacement_candidates(idx):
            try:
                return self._cached_item(candidate)
            except DataError as e:
                policy.handle(e, len(self))
            tries += 1
            if tries > policy.max_replacements:
                break
        raise DataError([self._problem(
            idx, 'no_usable_sample', f'none of the {tries} samples from this '
            'one on (of the same modality) can be used (logged above)')])

    def _replacement_candidates(self, idx):
        """``idx``, then the following samples (cyclically) that have an
        image exactly when it does: a replacement keeps the modality, which
        the length-grouped sampler batches by and supervisors need."""
        wants_image = has_image(self._samples[idx][0])
        yield idx
        for k in range(1, len(self)):
            candidate = (idx + k) % len(self)
            if has_image(self._samples[candidate][0]) == wants_image:
                yield candidate

    def _cached_item(self, idx) -> dict:
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

    def check_sample(self, idx, decode_image: bool = True):
        """:class:`~dsvlm.datasets.sample_check.SampleCheck` of sample
        ``idx``: its problems (without raising) and supervised tokens."""
        from .sample_check import check_llava_sample
        return check_llava_sample(self, idx, decode_image)

    def _log_truncation(self, idx, sid, num_tokens):
        if idx in self._truncated_ids:
            return
        self._truncated_ids.add(idx)
        print_log(f'sample {sid!r} of {self.ann_file} has '
                  f'{self.over_length(num_tokens)}: truncated '
                  f'({self.num_truncated} samples truncated so far)',
                  logger='current', level=logging.WARNING)
