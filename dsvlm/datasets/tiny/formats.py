"""Questions of the tiny world in the benchmarks' formats: multiple choice
(the answer and distractors of its type) and yes/no (one question answered
Yes and one No about an image).  The training split asks them about
training scenes (as LLaVA-1.5's mix holds A-OKVQA's multiple choice and
short yes/no answers), the tiny benchmarks about held-out scenes."""
from typing import List

from .scenes import COLORS, POSITIONS, SHAPES
from .texts import _indefinite

NUM_OPTIONS = 4
YES_NO_CATEGORIES = ('existence', 'count', 'position', 'color')
YES_NO_REQUEST = ' Please answer yes or no.'  # MME's questions end so


def answer_vocabulary(qtype: str, max_shapes: int) -> List[str]:
    """Every answer of a question type (counts: at least 1 and 2)."""
    counts = [str(k) for k in range(1, max(2, max_shapes) + 1)]
    return dict(color=list(COLORS), shape=list(SHAPES),
                position=list(POSITIONS), count=counts)[qtype]


def _other(rng, values, value):
    """A value of ``values`` other than ``value``."""
    others = [v for v in values if v != value]
    return others[int(rng.integers(len(others)))]


def mcq_options(rng, vocabulary: List[str], answer: str) -> List[str]:
    """The answer and up to 3 distractors of its type, shuffled."""
    if answer not in vocabulary:
        raise ValueError(f'answer {answer!r} is not among {vocabulary}')
    others = [v for v in vocabulary if v != answer]
    picked = sorted(rng.choice(len(others), replace=False,
                               size=min(NUM_OPTIONS - 1, len(others))))
    options = [answer] + [others[i] for i in picked]
    return [options[i] for i in rng.permutation(len(options))]


def letter(k: int) -> str:
    return chr(ord('A') + k)


def yes_no_questions(category: str, objects: List[dict], rng,
                      max_shapes: int):
    """``(question answered Yes, question answered No)`` about an image."""
    target = objects[int(rng.integers(len(objects)))]
    color, shape, position = (target[k] for k in ('color', 'shape',
                                                  'position'))
    if category == 'existence':
        absent = [c for c in COLORS if c not in {o['color'] for o in objects}]
        other = absent[int(rng.integers(len(absent)))]
        return (f'Is there {_indefinite(color)} {shape} in the image?',
                f'Is there {_indefinite(other)} {shape} in the image?')
    if category == 'count':
        other = int(_other(rng, answer_vocabulary('count', max_shapes),
                           str(len(objects))))
        return _count_question(len(objects)), _count_question(other)
    if category == 'position':
        return (f'Is the {color} {shape} at the {position}?',
                f'Is the {color} {shape} at the '
                f'{_other(rng, POSITIONS, position)}?')
    if category == 'color':
        return (f'Is the {shape} {color}?',
                f'Is the {shape} {_other(rng, list(COLORS), color)}?')
    raise ValueError(f'unknown yes/no category {category!r}; valid: '
                     f'{", ".join(YES_NO_CATEGORIES)}')


def _count_question(n: int) -> str:
    if n == 1:
        return 'Is there only one shape in the image?'
    return f'Are there {n} shapes in the image?'
