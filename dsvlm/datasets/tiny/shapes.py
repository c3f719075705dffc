"""Generate the tiny shapes world: images, LLaVA-format annotations, chance.

Layout of a world ``root``::

    images/{train,test}_{i:05d}.png   the images (image folder of all files)
    pretrain.json      stage 1: one caption conversation per train image
    instruct.json      stage 2: question turns about each train image, for
                       some images a multiple-choice and a yes/no question
                       in the benchmarks' prompt formats, and a few
                       text-only samples (no ``image`` key)
    test.json          one question per held-out image, balanced over the
                       question types; records carry ``question_type``
    scenes.json        ground truth objects of every image
    meta.json          parameters, counts, vocabulary and chance levels

Test scenes (the set of objects of an image) never occur in train.  The
same parameters always give byte-identical files.
"""
import json
from collections import Counter
from pathlib import Path

import numpy as np

from ..benchmark_prompts import multiple_choice_prompt, yes_no_prompt
from .atomic import build_once
from .scenes import (COLORS, POSITIONS, SCENE_WEIGHTINGS, SHAPES, draw_scene,
                     sample_scene, scene_to_records, shape_margin,
                     split_scenes)
from .formats import (YES_NO_CATEGORIES, YES_NO_REQUEST, answer_vocabulary,
                      letter, mcq_options, yes_no_questions)
from .texts import (CAPTION_PROMPTS, QUESTION_TYPES, TEXT_FACTS, conversation,
                    question_answer, with_image, caption)

WORLD_VERSION = 4
DEFAULT_PARAMS = dict(num_images_train=2000, num_images_test=400,
                      image_size=32, seed=0, max_shapes=3, jitter=1,
                      num_text_only=40, test_scene_fraction=0.2,
                      questions='grounded', train_scenes='per_count',
                      image_first=0.8, benchmark_formats=0.0)
FORMAT_STREAM = 7  # random stream of the benchmark-format records
QUESTION_SETS = ('grounded', 'all', 'some')
IMAGE_FOLDER = 'images'


def world_params(**params):
    """Validated parameters with defaults filled in (and the version)."""
    unknown = sorted(set(params) - set(DEFAULT_PARAMS))
    if unknown:
        raise TypeError(f'unknown shapes world parameter(s) {unknown}; '
                        f'valid: {", ".join(DEFAULT_PARAMS)}')
    p = dict(DEFAULT_PARAMS, **params)
    if p['image_size'] < 16 or p['image_size'] % 2:
        raise ValueError(f"image_size must be even and >= 16, got "
                         f"{p['image_size']}")
    if not 1 <= p['max_shapes'] <= len(SHAPES):
        raise ValueError(f"max_shapes must be in 1..{len(SHAPES)}, got "
                         f"{p['max_shapes']}")
    max_jitter = shape_margin(p['image_size']) - 1
    if not 0 <= p['jitter'] <= max_jitter:
        raise ValueError(f"jitter must be in 0..{max_jitter} for image_size "
                         f"{p['image_size']}, got {p['jitter']}")
    if not 0 <= p['benchmark_formats'] <= 1:
        raise ValueError('benchmark_formats must be in [0, 1], got '
                         f"{p['benchmark_formats']}")
    if not 0 < p['test_scene_fraction'] < 1:
        raise ValueError('test_scene_fraction must be in (0, 1), got '
                         f"{p['test_scene_fraction']}")
    if p['questions'] not in QUESTION_SETS:
        raise ValueError(f"questions must be one of {', '.join(QUESTION_SETS)}"
                         f", got {p['questions']!r}")
    if p['train_scenes'] not in SCENE_WEIGHTINGS:
        raise ValueError('train_scenes must be one of '
                         f"{', '.join(SCENE_WEIGHTINGS)}, got "
                         f"{p['train_scenes']!r}")
    for key in ('num_images_train', 'num_images_test', 'num_text_only'):
        if p[key] < 0:
            raise ValueError(f'{key} must be >= 0, got {p[key]}')
    p['version'] = WORLD_VERSION
    return p


def _instruct_pairs(rng, scene, questions):
    """The ``(type, question, answer)`` turns of an image's conversation.

    ``'grounded'``: one question type (colour, shape or position) asked
    of every object, with the count among them; no answer can be copied
    from an earlier turn (asked after "What color is the circle? red",
    "What shape is the red object?" could), and every type opens some
    conversations, as every type opens single-question test records.
    ``'all'``: every question about the scene, in random order.
    ``'some'``: 1-4 questions of distinct types.
    """
    k = len(scene)
    if questions == 'grounded':
        qtype = ('color', 'shape', 'position')[int(rng.integers(3))]
        turns = [(qtype, *question_answer(scene, qtype, int(o)))
                 for o in rng.permutation(k)]
        turns.insert(int(rng.integers(k + 1)),
                     ('count', *question_answer(scene, 'count', 0)))
        return turns
    if questions == 'all':
        pairs = [(t, *question_answer(scene, t, o)) for o in range(k)
                 for t in QUESTION_TYPES if t != 'count']
        pairs.append(('count', *question_answer(scene, 'count', 0)))
        return [pairs[i] for i in rng.permutation(len(pairs))]
    num_turns = int(rng.integers(1, len(QUESTION_TYPES) + 1))
    qtypes = [QUESTION_TYPES[i]
              for i in rng.permutation(len(QUESTION_TYPES))[:num_turns]]
    return [(t, *question_answer(scene, t, int(rng.integers(k))))
            for t in qtypes]


def _format_records(p, i, name, scene):
    """Training records of image ``i`` in the benchmarks' prompt formats
    (LLaVA-1.5's mix teaches them with A-OKVQA's multiple choice and VQAv2's
    short answers): with probability ``benchmark_formats`` each, a
    multiple-choice question answered by its letter and a yes/no question
    answered Yes or No.  Drawn from a stream of their own, so that the
    other records do not depend on ``benchmark_formats``."""
    rng = np.random.default_rng([p['seed'], FORMAT_STREAM, i])
    records = []
    if rng.random() < p['benchmark_formats']:
        qtype = QUESTION_TYPES[int(rng.integers(len(QUESTION_TYPES)))]
        q, a = question_answer(scene, qtype, int(rng.integers(len(scene))))
        options = mcq_options(rng, answer_vocabulary(qtype, p['max_shapes']),
                              a)
        prompt = multiple_choice_prompt(
            q, {letter(k): o for k, o in enumerate(options)})
        records.append(dict(id=f'{name[:-4]}_mcq', image=name,
                            conversations=conversation([(
                                with_image(prompt), letter(
                                    options.index(a)))])))
    if rng.random() < p['benchmark_formats']:
        category = YES_NO_CATEGORIES[int(rng.integers(
            len(YES_NO_CATEGORIES)))]
        questions = yes_no_questions(category, scene_to_records(scene), rng,
                                     p['max_shapes'])
        k = int(rng.integers(2))
        prompt = yes_no_prompt(questions[k] + YES_NO_REQUEST)
        records.append(dict(id=f'{name[:-4]}_yesno', image=name,
                            conversations=conversation([(
                                with_image(prompt), ('Yes', 'No')[k])])))
    return records


def _chance(test_records, train_answers, max_shapes):
    """Uniform-guess and majority-answer accuracies on the test records."""
    num_choices = dict(color=len(COLORS), shape=len(SHAPES),
                       position=len(POSITIONS), count=max_shapes)
    majority = {t: (min(train_answers[t].items(),
                        key=lambda kv: (-kv[1], kv[0]))[0]
                    if train_answers[t] else None) for t in QUESTION_TYPES}
    uniform, hits = {t: [] for t in QUESTION_TYPES}, {
        t: [] for t in QUESTION_TYPES}
    for rec in test_records:
        t = rec['question_type']
        uniform[t].append(1.0 / num_choices[t])
        hits[t].append(float(rec['conversations'][1]['value'] == majority[t]))

    def summary(values):
        per_type = {t: float(np.mean(v)) if v else None
                    for t, v in values.items()}
        flat = [x for v in values.values() for x in v]
        return dict(overall=float(np.mean(flat)) if flat else None,
                    per_type=per_type)

    return dict(uniform=dict(summary(uniform), num_choices=num_choices),
                majority=dict(summary(hits), answers=majority))


def _dump(obj, path):
    with open(path, 'w') as f:
        json.dump(obj, f, indent=1)
        f.write('\n')


def generate_shapes_world(root, **params):
    """Write a shapes world into ``root`` (not atomic; see ensure_...).

    Parameters (defaults in ``DEFAULT_PARAMS``): ``num_images_train``,
    ``num_images_test``, ``image_size``, ``seed``, ``max_shapes`` (1-3
    objects per image), ``jitter`` (max pixel offset of a shape),
    ``num_text_only`` (text-only samples in instruct.json),
    ``test_scene_fraction`` (share of scenes reserved for test),
    ``questions`` (the turns of a training conversation, see
    :func:`_instruct_pairs`), ``train_scenes`` (``'per_count'``: as many
    training images of 1, 2 and 3 objects; ``'per_scene'``: every training
    scene equally likely; the test images are always ``'per_count'``),
    ``image_first`` (the probability that ``<image>`` comes before the
    question text rather than after it).

    Returns:
        dict: the content of ``meta.json``.
    """
    p = world_params(**params)
    root = Path(root)
    (root / IMAGE_FOLDER).mkdir(parents=True, exist_ok=True)
    rng_split, rng_train, rng_test = (
        np.random.default_rng(s)
        for s in np.random.SeedSequence(p['seed']).spawn(3))
    pools = split_scenes(rng_split, p['max_shapes'], p['test_scene_fraction'])

    def make_image(split, i, rng):
        weighting = p['train_scenes'] if split == 'train' else 'per_count'
        scene, offsets = sample_scene(rng, pools[split], p['max_shapes'],
                                      p['jitter'], weighting)
        name = f'{split}_{i:05d}.png'
        draw_scene(scene, offsets, p['image_size']).save(
            root / IMAGE_FOLDER / name, format='PNG')
        scenes[name] = dict(objects=scene_to_records(scene), offsets=offsets)
        return name, scene

    scenes, pretrain, instruct, test = {}, [], [], []
    train_answers = {t: Counter() for t in QUESTION_TYPES}
    for i in range(p['num_images_train']):
        name, scene = make_image('train', i, rng_train)
        prompt = CAPTION_PROMPTS[int(rng_train.integers(len(CAPTION_PROMPTS)))]
        human = with_image(prompt, image_first=rng_train.random() < 0.7)
        pretrain.append(dict(id=name[:-4], image=name, conversations=(
            conversation([(human, caption(scene))]))))
        qas = _instruct_pairs(rng_train, scene, p['questions'])
        pairs = [(q, a) for _, q, a in qas]
        pairs[0] = (with_image(pairs[0][0],
                                rng_train.random() < p['image_first']),
                    pairs[0][1])
        instruct.append(dict(id=name[:-4], image=name,
                             conversations=conversation(pairs)))
        instruct += _format_records(p, i, name, scene)
        for t, _, a in qas:
            train_answers[t][a] += 1
    for j in range(p['num_text_only']):
        q, a = TEXT_FACTS[int(rng_train.integers(len(TEXT_FACTS)))]
        instruct.append(dict(id=f'text_{j:05d}',
                             conversations=conversation([(q, a)])))
    for j in range(p['num_images_test']):
        name, scene = make_image('test', j, rng_test)
        qtype = QUESTION_TYPES[j % len(QUESTION_TYPES)]
        q, a = question_answer(scene, qtype, int(rng_test.integers(len(scene))))
        test.append(dict(id=name[:-4], image=name, question_type=qtype,
                         conversations=conversation([(with_image(
                             q, rng_test.random() < p['image_first']), a)])))

    _dump(pretrain, root / 'pretrain.json')
    _dump(instruct, root / 'instruct.json')
    _dump(test, root / 'test.json')
    _dump(scenes, root / 'scenes.json')
    meta = dict(
        params=p,
        image_folder=IMAGE_FOLDER,
        files=dict(pretrain='pretrain.json', instruct='instruct.json',
                   test='test.json', scenes='scenes.json'),
        counts=dict(
            train_images=p['num_images_train'],
            test_images=p['num_images_test'],
            pretrain_samples=len(pretrain),
            instruct_samples=len(instruct),
            instruct_image_turns=sum(sum(c.values())
                                     for c in train_answers.values()),
            text_only_samples=p['num_text_only'],
            benchmark_format_samples=sum(
                r['id'].endswith(('_mcq', '_yesno')) for r in instruct),
            test_per_type=dict(Counter(r['question_type'] for r in test)),
            scenes_train={k: len(v) for k, v in pools['train'].items()},
            scenes_test={k: len(v) for k, v in pools['test'].items()}),
        vocabulary=dict(colors=list(COLORS), shapes=list(SHAPES),
                        positions=list(POSITIONS),
                        question_types=list(QUESTION_TYPES)),
        chance=_chance(test, train_answers, p['max_shapes']),
    )
    _dump(meta, root / 'meta.json')  # written last: marks the world complete
    return meta


def ensure_shapes_world(root, **params):
    """Generate the world at ``root`` once; reuse it when it is complete.

    Safe when several processes call it at once (built in a temporary sibling
    directory, then renamed).  Raises ``ValueError`` naming ``root`` when it
    holds a world generated with other parameters.

    Returns:
        Path: ``root``.
    """
    p = world_params(**params)
    user = {k: v for k, v in p.items() if k != 'version'}
    return build_once(root, p, lambda tmp: generate_shapes_world(tmp, **user),
                      'meta.json', 'tiny shapes world')


def load_world_meta(root):
    """The ``meta.json`` of a generated world."""
    with open(Path(root) / 'meta.json') as f:
        return json.load(f)
