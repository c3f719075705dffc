"""The tiny shapes world: deterministic, correct answers, safe generation."""
import filecmp
import json
import multiprocessing as mp
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dsvlm.datasets.tiny import (build_tiny_tokenizer, ensure_shapes_world,
                                 load_world_meta)

SMALL = dict(num_images_train=40, num_images_test=24, image_size=32,
             num_text_only=3, benchmark_formats=0.5)
PALETTE = {'red': (220, 40, 40), 'green': (40, 170, 60), 'blue': (40, 80, 230),
           'yellow': (235, 210, 30), 'purple': (150, 60, 200),
           'orange': (245, 140, 30)}
CELLS = {'top left': (0, 0), 'top right': (0, 1), 'bottom left': (1, 0),
         'bottom right': (1, 1)}


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    return ensure_shapes_world(tmp_path_factory.mktemp('w') / 'shapes',
                               **SMALL)


def load(root, name):
    return json.loads((Path(root) / name).read_text())


def shape_of(mask):
    """Circle, square or triangle from how much of its bounding box a
    shape fills (square 1, circle ~pi/4, triangle ~1/2)."""
    ys, xs = np.nonzero(mask)
    fill = mask.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
    return 'square' if fill > 0.95 else 'circle' if fill > 0.68 else 'triangle'


def objects_in_pixels(path):
    """Read the objects off the image itself: the colour and shape found in
    each cell of the 2x2 grid (independent of the generator's bookkeeping).
    """
    pixels = np.asarray(Image.open(path).convert('RGB'))
    half = pixels.shape[0] // 2
    found = {}
    for position, (r, c) in CELLS.items():
        cell = pixels[r * half:(r + 1) * half, c * half:(c + 1) * half]
        allowed = {tuple(v) for v in PALETTE.values()} | {(0, 0, 0)}
        assert {tuple(v) for v in cell.reshape(-1, 3).tolist()} <= allowed, (
            path, 'colours outside the palette and background')
        colours = {name for name, rgb in PALETTE.items()
                   if (cell == rgb).all(-1).sum() > 10}
        assert len(colours) <= 1, (path, position, colours)
        if colours:
            colour = colours.pop()
            found[position] = (colour, shape_of((cell == PALETTE[colour])
                                                .all(-1)))
    return found


def test_same_parameters_give_identical_files(tmp_path, world):
    again = ensure_shapes_world(tmp_path / 'again', **SMALL)
    build_tiny_tokenizer(world), build_tiny_tokenizer(again)
    names = [p.relative_to(world).as_posix() for p in Path(world).rglob('*')
             if p.is_file()]
    assert 'tokenizer/tokenizer.json' in names
    match, mismatch, errors = filecmp.cmpfiles(world, again, names,
                                               shallow=False)
    assert not mismatch and not errors and len(match) == len(names) > 60


def open_answer(question, found):
    """The answer to an open question, from the objects in the pixels."""
    colour_of = {shape: colour for colour, shape in found.values()}
    shape_of_colour = dict(found.values())
    words = question.rstrip('?').split()
    if question.startswith('How many'):
        return str(len(found))
    if question.startswith('What color is the'):
        return colour_of[words[-1]]
    if question.startswith('What shape is the'):
        return shape_of_colour[words[4]]
    if question.startswith('Where is the'):
        return next(p for p, obj in found.items()
                    if obj == (words[3], words[4]))
    raise AssertionError(f'unexpected question {question!r}')


def yes_no_truth(question, found):
    """Whether a yes/no question is true of the objects in the pixels."""
    words = question.rstrip('?').split()
    if question.startswith('Is there only one shape'):
        return len(found) == 1
    if question.startswith('Are there'):
        return len(found) == int(words[2])
    if question.startswith('Is there'):  # Is there a red circle in ...
        return (words[3], words[4]) in found.values()
    if question.startswith('Is the') and ' at the ' in question:
        position = question.rstrip('?').split(' at the ')[1]
        return found.get(position) == (words[2], words[3])
    if question.startswith('Is the'):  # Is the circle red?
        return (words[3], words[2]) in found.values()
    raise AssertionError(f'unexpected question {question!r}')


MCQ_END = "\nAnswer with the option's letter from the given choices directly."
SHORT_END = '\nAnswer the question using a single word or phrase.'


def test_answers_agree_with_the_pixels(world):
    checked, formats = 0, Counter()
    for name in ('instruct.json', 'test.json'):
        for record in load(world, name):
            if 'image' not in record:
                continue
            found = objects_in_pixels(Path(world) / 'images' / record['image'])
            turns = record['conversations']
            for q, a in zip(turns[::2], turns[1::2]):
                question, answer = q['value'].replace('<image>', '').strip(), \
                    a['value']
                if question.endswith(MCQ_END):  # question, options, request
                    lines = question[:-len(MCQ_END)].split('\n')
                    options = dict(line.split('. ', 1) for line in lines[1:])
                    assert options[answer] == open_answer(lines[0], found)
                    assert len(set(options.values())) == len(options) >= 2
                    formats['mcq'] += 1
                elif question.endswith(SHORT_END):
                    truth = yes_no_truth(question[:-len(SHORT_END)], found)
                    assert answer == ('Yes' if truth else 'No'), record['id']
                    formats[answer] += 1
                else:
                    assert open_answer(question, found) == answer, record['id']
            checked += 1
    assert checked > 60
    # the benchmark formats are taught, with both yes/no answers
    assert formats['mcq'] and formats['Yes'] and formats['No']


def test_splits_are_disjoint_and_in_llava_format(world):
    train = load(world, 'instruct.json')
    test = load(world, 'test.json')
    train_images = {r['image'] for r in train if 'image' in r}
    assert train_images.isdisjoint({r['image'] for r in test})
    scenes = load(world, 'scenes.json')
    key = lambda img: json.dumps(scenes[img]['objects'], sort_keys=True)
    assert {key(i) for i in train_images}.isdisjoint(
        {key(r['image']) for r in test})
    for record in train + test + load(world, 'pretrain.json'):
        roles = [t['from'] for t in record['conversations']]
        assert roles == ['human', 'gpt'] * (len(roles) // 2)
    assert sum('image' not in r for r in train) == SMALL['num_text_only']
    assert Counter(r['question_type'] for r in test) == {
        'color': 6, 'shape': 6, 'position': 6, 'count': 6}


def test_chance_levels_recomputed(world):
    meta = load_world_meta(world)
    train = load(world, 'instruct.json')
    test = load(world, 'test.json')
    kinds = {'What color': 'color', 'What shape': 'shape',
             'Where is': 'position', 'How many': 'count'}
    answers = {k: Counter() for k in kinds.values()}
    for record in train:
        if 'image' not in record:
            continue
        turns = record['conversations']
        for q, a in zip(turns[::2], turns[1::2]):
            text = q['value'].replace('<image>', '').strip()
            if text.endswith((MCQ_END, SHORT_END)):
                continue  # chance is of the open questions the test asks
            kind = next(v for k, v in kinds.items() if text.startswith(k))
            answers[kind][a['value']] += 1
    majority = {k: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0]
                for k, c in answers.items()}
    hits = [r['conversations'][1]['value'] == majority[r['question_type']]
            for r in test]
    assert meta['chance']['majority']['overall'] == pytest.approx(
        np.mean(hits))
    uniform = {'color': 1 / 6, 'shape': 1 / 3, 'position': 1 / 4,
               'count': 1 / 3}
    assert meta['chance']['uniform']['overall'] == pytest.approx(
        np.mean([uniform[r['question_type']] for r in test]))


def test_without_benchmark_formats_the_world_is_as_before(tmp_path, world):
    """``benchmark_formats`` only adds records: the other records, and the
    tokenizer of a world without them, do not depend on it."""
    plain = ensure_shapes_world(tmp_path / 'plain',
                                **dict(SMALL, benchmark_formats=0.0))
    with_formats = [r for r in load(world, 'instruct.json')
                    if not r['id'].endswith(('_mcq', '_yesno'))]
    assert load(plain, 'instruct.json') == with_formats
    assert load(plain, 'test.json') == load(world, 'test.json')
    vocab = build_tiny_tokenizer(plain).get_vocab()
    assert 'Yes' not in vocab and 'ĠYes' not in vocab
    assert {'Yes', 'ĠYes'} <= set(build_tiny_tokenizer(world).get_vocab())


def test_other_parameters_on_the_same_root_fail(world):
    with pytest.raises(ValueError, match='other parameters'):
        ensure_shapes_world(world, **dict(SMALL, seed=1))


def test_tokenizer_round_trips_and_keeps_answers_short(world):
    tok = build_tiny_tokenizer(world)
    text = ("A chat between a curious user and an artificial intelligence "
            "assistant. USER: What color is the circle? ASSISTANT: purple"
            "</s><|im_start|>user\nWhere?<|im_end|>")
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    # every answer of the data, alone (llama3, qwen2 write it so) and after
    # a space (vicuna_v1): one token per word
    answers = {t['value'] for name in ('instruct.json', 'test.json')
               for r in load(world, name) for t in r['conversations'][1::2]}
    assert {'red', 'circle', 'top left', 'bottom right', '1', '3'} <= answers
    for answer in answers:
        for form in (answer, ' ' + answer):
            assert len(tok.tokenize(form)) == len(answer.split()), (
                form, tok.tokenize(form))
            assert tok.decode(tok.encode(form, add_special_tokens=False)) \
                == form
    for special in ('</s>', '<|eot_id|>', '<|im_end|>'):
        assert len(tok.encode(special, add_special_tokens=False)) == 1
    assert tok.pad_token == '<pad>' and tok.bos_token == '<s>'
    assert build_tiny_tokenizer(world).get_vocab() == tok.get_vocab()


def _ensure(root):
    ensure_shapes_world(root, **SMALL)
    return sorted(p.name for p in (Path(root) / 'images').iterdir())


def test_two_processes_generating_at_once_leave_one_complete_world(tmp_path):
    root = tmp_path / 'shared'
    with mp.get_context('fork').Pool(2) as pool:
        listings = pool.map(_ensure, [root, root])
    assert listings[0] == listings[1]
    assert len(listings[0]) == SMALL['num_images_train'] + \
        SMALL['num_images_test']
    assert not [p for p in tmp_path.iterdir() if p.name != 'shared']


def copyable_answers(record):
    """Turns whose answer words already occur, in order, in the earlier
    turns of the conversation (a shortcut around the image)."""
    turns = [t['value'].replace('<image>', ' ') for t in record['conversations']]
    found = []
    for i in range(1, len(turns), 2):
        earlier = ' '.join(turns[:i]).replace('?', ' ').replace('.', ' ')
        words, answer = earlier.split(), turns[i].split()
        if any(words[j:j + len(answer)] == answer
               for j in range(len(words) - len(answer) + 1)):
            found.append(turns[i - 1])
    return found


@pytest.mark.parametrize('questions', ['grounded', 'all'])
def test_grounded_conversations_have_no_copyable_answer(tmp_path, questions):
    root = ensure_shapes_world(tmp_path / questions,
                               **dict(SMALL, questions=questions))
    # the benchmark-format records are single questions whose options
    # hold the answer by design
    records = [r for r in load(root, 'instruct.json') if 'image' in r
               and not r['id'].endswith(('_mcq', '_yesno'))]
    copyable = [q for r in records for q in copyable_answers(r)]
    if questions == 'all':  # the check finds the shortcuts where they are
        assert copyable
        return
    assert not copyable
    scenes = load(root, 'scenes.json')
    first_kinds = Counter()
    for record in records:
        k = len(scenes[record['image']]['objects'])
        asked = [t['value'].replace('<image>', '').strip()
                 for t in record['conversations'][::2]]
        kinds = [q.split(' the ')[0] for q in asked]
        # one question type about every object once, and one count
        assert kinds.count('How many shapes are there?') == 1
        block = [x for x in kinds if x != 'How many shapes are there?']
        assert block in (['What color is'] * k, ['What shape is'] * k,
                         ['Where is'] * k)
        assert len(set(asked)) == len(asked) == k + 1
        first_kinds[kinds[0]] += 1
    # every type opens conversations, as every type opens the test records
    assert set(first_kinds) == {'What color is', 'What shape is', 'Where is',
                                'How many shapes are there?'}


def test_per_scene_weighting_follows_the_scene_pools():
    from dsvlm.datasets.tiny.scenes import sample_scene, split_scenes
    pools = split_scenes(np.random.default_rng(0), 3, 0.2)['train']
    draws = {'per_count': Counter(), 'per_scene': Counter()}
    rng = np.random.default_rng(1)
    for weighting, counter in draws.items():
        for _ in range(3000):
            scene, offsets = sample_scene(rng, pools, 3, 1, weighting)
            assert scene in pools[len(scene)] and len(offsets) == len(scene)
            counter[len(scene)] += 1
    total = sum(len(p) for p in pools.values())
    for k in (1, 2, 3):
        assert draws['per_count'][k] / 3000 == pytest.approx(1 / 3, abs=0.03)
        assert draws['per_scene'][k] / 3000 == pytest.approx(
            len(pools[k]) / total, abs=0.03)
    with pytest.raises(ValueError, match='per_count, per_scene'):
        sample_scene(rng, pools, 3, 1, 'uniform')


def test_bad_world_parameters_are_named():
    with pytest.raises(ValueError, match="questions must be one of"):
        ensure_shapes_world('/nonexistent', questions='every')
    with pytest.raises(ValueError, match='train_scenes must be one of'):
        ensure_shapes_world('/nonexistent', train_scenes='uniform')
    with pytest.raises(TypeError, match='all_questions'):
        ensure_shapes_world('/nonexistent', all_questions=True)


def test_captions_use_the_right_article():
    from dsvlm.datasets.tiny.texts import caption
    assert caption(((0, 'circle', 'orange'), (3, 'square', 'red'))) == (
        'an orange circle at the top left and a red square at the '
        'bottom right.')
