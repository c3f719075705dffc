"""Checking one sample of a :class:`LlavaDataset` the way training reads it,
without raising: what ``tools/check_data.py`` runs on every sample."""
import os.path as osp
from typing import List, NamedTuple, Optional

from .errors import DataError, DataProblem
from .image_processing import preprocess_image


class SampleCheck(NamedTuple):
    problems: List[DataProblem]
    num_tokens: Optional[int] = None  # after splicing, before truncation
    num_supervised: Optional[int] = None  # supervised tokens kept


def check_llava_sample(dataset, idx, decode_image: bool = True
                       ) -> SampleCheck:
    """Tokenise sample ``idx`` as training does (lengths after splicing the
    image features), and load its image through the whole pipeline (decode,
    mode conversion, budget, padding, the image processor), collecting
    every problem: a truncation that cuts supervised tokens, a sample left
    with none, a missing, corrupt, oversized or too elongated image.  With
    ``decode_image=False`` the image is only looked for."""
    problems, tokens = [], None
    try:
        tokens = dataset.tokenize(idx)[0]
    except DataError as e:
        problems += e.problems
    if tokens is not None and tokens.truncated:
        problems.append(dataset._problem(
            idx, 'over_length', f'{dataset.over_length(tokens.num_tokens)}: '
            f'truncated, {tokens.num_supervised_kept} of '
            f'{tokens.num_supervised} supervised tokens kept'))
    path = dataset.image_path(idx)
    if path is not None:
        if decode_image:
            problems += _image_problems(dataset, idx)
        elif not osp.isfile(path):
            problems.append(dataset._problem(idx, 'missing_image',
                                             f'image not found: {path}'))
    if tokens is None:
        return SampleCheck(problems)
    return SampleCheck(problems, tokens.num_tokens,
                       tokens.num_supervised_kept)


def _image_problems(dataset, idx) -> List[DataProblem]:
    try:
        image = dataset.load_image(idx)
    except DataError as e:
        return e.problems
    if dataset.image_processor is None:
        return []
    try:
        preprocess_image(image, dataset.image_processor,
                         dataset.image_aspect_ratio)
    except Exception as e:  # the processor's own errors, reported per sample
        return [dataset._problem(
            idx, 'unreadable_image', f'the image processor failed on '
            f'{dataset.image_path(idx)}: {type(e).__name__}: {e}')]
    return []
