"""What makes a well-formed annotation record unusable for a dataset: a
template it does not fit, an image path outside the image folder."""
import os
import os.path as osp
from typing import Optional, Tuple

from .annotations import has_image


def record_problem(record, template) -> Tuple[Optional[str], Optional[str]]:
    """``(kind, message)`` of what makes ``record`` unusable with
    ``template``, or ``(None, None)``."""
    problem = template_problem(record, template)
    if problem:
        return 'bad_image_token', problem
    problem = image_path_problem(record)
    if problem:
        return 'bad_image_path', problem
    return None, None


def template_problem(record, template) -> Optional[str]:
    """Why ``template`` cannot render the record (``plain`` takes one
    image question and its answer)."""
    if not template.image_only_prompt:
        return None
    if not has_image(record):
        return f'the {template.name!r} template needs an image'
    if len(record['conversations']) != 2:
        return f'the {template.name!r} template takes one human/gpt round'
    return None


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
