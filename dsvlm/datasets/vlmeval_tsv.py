"""A benchmark in VLMEvalKit's TSV format as a test-mode dataset."""
import logging
from pathlib import Path
from typing import Optional

import torch
from mmengine.logging import print_log
from PIL import Image
from torch.utils.data import Dataset

from dsvlm.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX
from dsvlm.registry import DATASETS

from .benchmark_prompts import (PROMPT_STYLES, benchmark_prompt,
                                resolve_prompt_style)
from .benchmark_table import BenchmarkRow, load_benchmark_table
from .errors import DataError
from .image_processing import (ASPECT_RATIOS, build_image_processor,
                               preprocess_image)
from .templates import GPT, HUMAN, get_template
from .tokenization import ImageTruncatedError, tokenize_segments
from .tokenizers import build_tokenizer

META_COLUMNS = ('category', 'l2-category')  # copied into data_sample


@DATASETS.register_module()
class VLMEvalTSVDataset(Dataset):
    """The rows of a VLMEvalKit benchmark TSV as questions to answer.

    Items have the shape of :class:`LlavaDataset` test-mode items, so that
    ``llava_collate`` and ``LlavaModel.predict`` take them as they are:
    ``dict(input_ids, labels, pixel_values, data_sample)``, where
    ``input_ids`` is the template's generation prompt for ``<image>\\n`` +
    the row's question (see :mod:`~dsvlm.datasets.benchmark_prompts`),
    ``labels`` are all ``IGNORE_INDEX`` and ``pixel_values`` is the decoded
    image, preprocessed (``[3, H, W]``).  ``data_sample`` has:

    * ``id``: the row's ``index`` cell; ``index``: its position here;
    * ``benchmark``: the file's stem (``MMBench_DEV_EN``);
    * ``row``: every cell of the row but ``image``, as strings (what a
      prediction file writes back);
    * ``options``: ``{letter: text}`` of the row (empty without options);
    * ``gt_answer``: the ``answer`` cell, or None;
    * ``category`` and ``l2-category`` when the file has them;
    * ``prompt``: the rendered generation prompt;
    * ``num_rows``: the rows of the file that have an image (VLMEvalKit
      skips the others), before ``max_samples``.

    The table is read and checked on construction (see
    :mod:`~dsvlm.datasets.benchmark_table`); images are decoded in
    ``__getitem__``.

    Args:
        data_file: the ``.tsv`` file.
        tokenizer, image_processor, template, max_length,
            num_image_tokens, image_aspect_ratio: as for
            :class:`LlavaDataset`.
        prompt_style: ``'multiple_choice'``, ``'yes_no'``, ``'vqa'`` or
            ``'auto'`` (multiple choice when the file has an ``A`` column,
            yes/no when every answer is yes or no, else vqa).
        max_samples: evaluate the first ``max_samples`` rows only (logged).
    """

    def __init__(self, data_file, tokenizer, image_processor, template,
                 max_length: int = 2048,
                 num_image_tokens: Optional[int] = None,
                 image_aspect_ratio: str = 'pad',
                 prompt_style: str = 'auto',
                 max_samples: Optional[int] = None):
        if image_aspect_ratio not in ASPECT_RATIOS:
            raise ValueError(
                f'unknown image_aspect_ratio {image_aspect_ratio!r}; valid: '
                f'{", ".join(ASPECT_RATIOS)}')
        if prompt_style not in PROMPT_STYLES:
            raise ValueError(f'unknown prompt_style {prompt_style!r}; valid: '
                             f'{", ".join(PROMPT_STYLES)}')
        self.data_file = str(data_file)
        self.benchmark = Path(self.data_file).stem
        self.template = get_template(template)
        if self.template.image_only_prompt:
            raise ValueError(
                f'the {self.template.name!r} template replaces the question '
                f'by {DEFAULT_IMAGE_TOKEN}; a benchmark needs a chat template '
                '(vicuna_v1, llama3, qwen2)')
        self.tokenizer = build_tokenizer(tokenizer)
        self.image_processor = build_image_processor(image_processor)
        self.max_length = max_length
        self.num_image_tokens = num_image_tokens
        self.image_aspect_ratio = image_aspect_ratio
        self.table = load_benchmark_table(self.data_file)
        self.prompt_style = resolve_prompt_style(
            prompt_style, bool(self.table.option_letters),
            (row.cell('answer') for row in self.table.rows))
        self.num_rows = len(self.table.rows)
        self._rows = self.table.rows[:max_samples]
        self._truncated = set()
        self._log_loaded(max_samples)

    def _log_loaded(self, max_samples) -> None:
        name = type(self).__name__
        if self.table.num_skipped:
            print_log(f'{name}: {self.table.num_skipped} row(s) of '
                      f'{self.data_file} have no image and are skipped (as '
                      'VLMEvalKit does)', logger='current',
                      level=logging.WARNING)
        if len(self) < self.num_rows:
            print_log(f'{name}: max_samples={max_samples}: only {len(self)} '
                      f'of the {self.num_rows} rows of {self.data_file} are '
                      'evaluated', logger='current', level=logging.WARNING)
        print_log(f'{name}: {len(self)} {self.prompt_style} questions from '
                  f'{self.data_file}', logger='current')

    @property
    def metainfo(self) -> dict:
        """MMEngine hands it to the evaluator as ``dataset_meta``."""
        return dict(benchmark=self.benchmark, data_file=self.data_file,
                    prompt_style=self.prompt_style, num_rows=self.num_rows,
                    template=self.template.name)

    def full_init(self) -> None:
        """MMEngine's wrappers call it; the table is read in ``__init__``."""

    def __len__(self) -> int:
        return len(self._rows)

    def row(self, idx) -> BenchmarkRow:
        return self._rows[idx]

    def question_text(self, idx) -> str:
        """The row's question as the model is asked it (without image)."""
        row = self._rows[idx]
        return benchmark_prompt(self.prompt_style, row.cells['question'],
                                row.options, row.cell('hint'))

    def load_image(self, idx) -> Image.Image:
        return self.table.load_image(self._rows[idx])

    def tokenize(self, idx):
        """``(TokenizedConversation, prompt text)`` of row ``idx``."""
        row = self._rows[idx]
        conversation = [
            {'from': HUMAN,
             'value': f'{DEFAULT_IMAGE_TOKEN}\n{self.question_text(idx)}'},
            {'from': GPT, 'value': row.cell('answer') or ''}]
        segments, _ = self.template.generation_prompt(conversation)
        try:
            tokens = tokenize_segments(segments, self.tokenizer,
                                       self.template.add_bos, self.max_length,
                                       image_length=self.num_image_tokens or 1)
        except ImageTruncatedError as e:
            raise DataError([self.table.problem(row, 'over_length',
                                                str(e))]) from e
        if tokens.truncated and idx not in self._truncated:
            self._truncated.add(idx)
            print_log(f'row {row.index!r} (line {row.line}) of '
                      f'{self.data_file} has {tokens.num_tokens} tokens > '
                      f'max_length={self.max_length}: its prompt is truncated',
                      logger='current', level=logging.WARNING)
        return tokens, ''.join(s.text for s in segments)

    def __getitem__(self, idx) -> dict:
        row = self._rows[idx]
        tokens, prompt = self.tokenize(idx)
        pixel_values = preprocess_image(self.load_image(idx),
                                        self.image_processor,
                                        self.image_aspect_ratio)
        data_sample = dict(id=row.index, index=idx, benchmark=self.benchmark,
                           row=dict(row.cells), options=dict(row.options),
                           gt_answer=row.cell('answer'), prompt=prompt,
                           num_rows=self.num_rows)
        data_sample.update((c, row.cells[c]) for c in META_COLUMNS
                           if c in row.cells)
        input_ids = torch.tensor(tokens.input_ids, dtype=torch.long)
        return dict(input_ids=input_ids,
                    labels=torch.full_like(input_ids, IGNORE_INDEX),
                    pixel_values=pixel_values, data_sample=data_sample)
