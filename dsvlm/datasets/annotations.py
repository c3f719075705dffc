"""Loading and validating LLaVA annotation files (``.json`` lists, ``.jsonl``).

A record is ``{"id", "image" (optional), "conversations": [{"from": "human",
"value": ...}, {"from": "gpt", "value": ...}, ...]}``.  Records are validated
on load (cheap checks, a few seconds for the 665k mix); every problem is
collected, then either raised together as a :class:`DataError` or, with
``skip_invalid=True``, the bad records are dropped and the problems kept.

``<image>`` may stand anywhere in the first human turn (the 558k captions put
it after the prompt); :func:`normalize_conversations` moves it to the front
as LLaVA does (``<image>\\n`` + the rest).  An image sample without
``<image>`` gets one in front of its first human turn.
"""
import json
import os.path as osp
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from dsvlm.constants import DEFAULT_IMAGE_TOKEN

from .errors import DataError, DataProblem
from .templates import GPT, HUMAN

ROLE_ALIASES = {'human': HUMAN, 'user': HUMAN, 'gpt': GPT, 'assistant': GPT}


@dataclass
class Annotations:
    """The valid records of a file and the problems found in it."""
    ann_file: str
    records: List[dict] = field(default_factory=list)
    indices: List[int] = field(default_factory=list)  # position in the file
    lines: Optional[List[int]] = None  # 1-based lines (JSONL only)
    problems: List[DataProblem] = field(default_factory=list)


def sample_id(record, index: int) -> str:
    """The record's ``id``, or its position when it has none."""
    if isinstance(record, dict) and record.get('id') is not None:
        return str(record['id'])
    return f'#{index}'


def has_image(record: dict) -> bool:
    return record.get('image') is not None


def load_annotations(ann_file: str, skip_invalid: bool = False) -> Annotations:
    """Parse and validate ``ann_file``.

    Raises :class:`DataError` naming the file, line, record and id of every
    problem unless ``skip_invalid`` (then bad records are left out and listed
    in ``.problems``).
    """
    ann_file = str(ann_file)
    if not osp.isfile(ann_file):
        raise FileNotFoundError(f'annotation file not found: {ann_file}')
    ann = Annotations(ann_file)
    if ann_file.endswith('.jsonl'):
        raw, lines = _parse_jsonl(ann_file, ann.problems)
    elif ann_file.endswith('.json'):
        raw, lines = _parse_json(ann_file, ann.problems), None
    else:
        raise ValueError(f'unsupported annotation file {ann_file}: expected '
                         'a .json list or a .jsonl file')
    ann.lines = [] if lines is not None else None
    for index, record in enumerate(raw):
        line = lines[index] if lines is not None else None
        problem = check_record(record)
        if problem is not None:
            ann.problems.append(DataProblem(
                problem[0], ann_file, problem[1], line=line, index=index,
                sample_id=sample_id(record, index)))
            continue
        ann.records.append(record)
        ann.indices.append(index)
        if lines is not None:
            ann.lines.append(line)
    if ann.problems and not skip_invalid:
        raise DataError(ann.problems)
    return ann


def _utf8_lines(ann_file: str, problems: list) -> List[Optional[str]]:
    """The file's lines decoded as UTF-8; a line that is not UTF-8 is None,
    with a ``bad_encoding`` problem naming its line and column."""
    with open(ann_file, 'rb') as f:
        raw_lines = f.read().split(b'\n')
    lines = []
    for lineno, raw in enumerate(raw_lines, start=1):
        try:
            lines.append(raw.decode('utf-8'))
        except UnicodeDecodeError as e:
            problems.append(DataProblem(
                'bad_encoding', ann_file,
                f'not UTF-8: byte 0x{raw[e.start]:02x} at column '
                f'{e.start + 1} (annotation files are UTF-8 JSON; convert '
                'it, e.g. iconv -f latin1 -t utf-8)', line=lineno))
            lines.append(None)
    return lines


def _parse_json(ann_file: str, problems: list) -> list:
    lines = _utf8_lines(ann_file, problems)
    if None in lines:  # undecodable lines are listed; the rest cannot parse
        return []
    try:
        data = json.loads('\n'.join(lines))
    except json.JSONDecodeError as e:
        problems.append(DataProblem('bad_json', ann_file,
                                    f'{e.msg} (column {e.colno})',
                                    line=e.lineno))
        return []
    if not isinstance(data, list):
        problems.append(DataProblem(
            'bad_json', ann_file,
            'a .json annotation file must hold a list, got '
            f'{type(data).__name__}'))
        return []
    return data


def _parse_jsonl(ann_file: str, problems: list) -> Tuple[list, List[int]]:
    records, lines = [], []
    for lineno, text in enumerate(_utf8_lines(ann_file, problems), start=1):
        if text is None or not text.strip():
            continue  # an undecodable line is a problem already
        try:
            records.append(json.loads(text.strip()))
        except json.JSONDecodeError as e:
            problems.append(DataProblem('bad_json', ann_file,
                                        f'{e.msg} (column {e.colno})',
                                        line=lineno))
            continue
        lines.append(lineno)
    return records, lines


def check_record(record) -> Optional[Tuple[str, str]]:
    """``(kind, message)`` of the first problem of a record, or None."""
    if not isinstance(record, dict):
        return 'bad_record', ('a record must be a JSON object, got '
                              f'{type(record).__name__}')
    convs = record.get('conversations')
    if not isinstance(convs, list) or not convs:
        return 'bad_record', ("missing or empty 'conversations' list; keys: "
                              f'{sorted(record)}')
    roles = []
    for k, turn in enumerate(convs):
        if (not isinstance(turn, dict) or turn.get('from') not in ROLE_ALIASES
                or not isinstance(turn.get('value'), str)):
            return 'bad_record', (
                f'turn {k} must be {{"from": one of {sorted(ROLE_ALIASES)}, '
                f'"value": str}}, got {str(turn)[:100]}')
        roles.append(ROLE_ALIASES[turn['from']])
    if GPT not in roles:
        return 'no_assistant', f'no assistant (gpt) turn; roles: {roles}'
    if len(roles) % 2 or roles != [HUMAN, GPT] * (len(roles) // 2):
        return 'bad_roles', ('turns must alternate human/gpt, starting with '
                             f'human and ending with gpt; roles: {roles}')
    image = record.get('image')
    if image is not None and not isinstance(image, str):
        return 'bad_record', ("'image' must be one path (multi-image samples "
                              f'are not supported), got {str(image)[:100]}')
    in_first = convs[0]['value'].count(DEFAULT_IMAGE_TOKEN)
    total = sum(turn['value'].count(DEFAULT_IMAGE_TOKEN) for turn in convs)
    if image is None and total:
        return 'bad_image_token', (f'{DEFAULT_IMAGE_TOKEN} in the text of a '
                                   "sample without 'image'")
    if total > 1 or total != in_first:
        return 'bad_image_token', (f'{DEFAULT_IMAGE_TOKEN} may appear once, '
                                   'in the first human turn')
    return None


def normalize_conversations(record: dict) -> List[dict]:
    """Turns as ``{'from': 'human'|'gpt', 'value'}``; for an image sample the
    first human turn becomes ``<image>\\n`` + its text without ``<image>``."""
    convs = [{'from': ROLE_ALIASES[t['from']], 'value': t['value']}
             for t in record['conversations']]
    if has_image(record):
        rest = convs[0]['value'].replace(DEFAULT_IMAGE_TOKEN, '').strip()
        convs[0]['value'] = (DEFAULT_IMAGE_TOKEN + '\n' + rest).strip()
    return convs
