"""Captions, questions and conversations of the tiny world (LLaVA format)."""
from .scenes import COLORS, POSITIONS, SHAPES

IMAGE = '<image>'
QUESTION_TYPES = ('color', 'shape', 'position', 'count')

# stage-1 prompts in the style of blip_laion_cc_sbu_558k.json
CAPTION_PROMPTS = (
    'Describe the image.',
    'Describe the image concisely.',
    'Provide a brief description of the given image.',
    'Write a short caption for the image.',
    'Summarize the visual content of the image.',
    'What is in the picture?',
)

# text-only samples (no image): exercise the text-only data path
TEXT_FACTS = (
    ('What color do you get by mixing red and blue?', 'purple'),
    ('What color do you get by mixing red and yellow?', 'orange'),
    ('What color do you get by mixing blue and yellow?', 'green'),
    ('How many sides does a triangle have?', '3'),
    ('How many sides does a square have?', '4'),
    ('How many corners does a circle have?', '0'),
    ('What shape has three sides?', 'triangle'),
    ('What shape has four equal sides?', 'square'),
    ('What shape is round?', 'circle'),
)


def _indefinite(word):
    return ('an ' if word[0] in 'aeiou' else 'a ') + word


def caption(scene):
    """'a red circle at the top left and an orange square at the bottom
    right.'"""
    parts = [f'{_indefinite(c)} {s} at the {POSITIONS[i]}'
             for i, s, c in scene]
    if len(parts) == 1:
        return parts[0] + '.'
    return ', '.join(parts[:-1]) + ' and ' + parts[-1] + '.'


def question_answer(scene, qtype, target):
    """The question of type ``qtype`` about object ``target`` and its answer."""
    index, shape, color = scene[target]
    if qtype == 'color':
        return f'What color is the {shape}?', color
    if qtype == 'shape':
        return f'What shape is the {color} object?', shape
    if qtype == 'position':
        return f'Where is the {color} {shape}?', POSITIONS[index]
    if qtype == 'count':
        return 'How many shapes are there?', str(len(scene))
    raise ValueError(f'unknown question type {qtype!r}; valid: '
                     f'{", ".join(QUESTION_TYPES)}')


def with_image(text, image_first=True):
    """Put the image token before (LLaVA's usual) or after the text."""
    return f'{IMAGE}\n{text}' if image_first else f'{text}\n{IMAGE}'


def conversation(pairs):
    """``[(human, gpt), ...]`` as LLaVA ``conversations``."""
    turns = []
    for human, gpt in pairs:
        turns.append({'from': 'human', 'value': human})
        turns.append({'from': 'gpt', 'value': gpt})
    return turns


def all_answers(max_shapes=3):
    """Every answer of the world: image questions and text-only facts."""
    answers = list(COLORS) + list(SHAPES) + list(POSITIONS)
    answers += [str(k) for k in range(1, max_shapes + 1)]
    return answers + sorted({a for _, a in TEXT_FACTS} - set(answers))
