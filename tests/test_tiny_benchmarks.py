"""The tiny world's benchmarks: MMBench-style circular MCQ, MME-style
yes/no pairs, deterministic files, and the dataset that configs name."""
import csv
import filecmp
import json
import re
from collections import defaultdict
from pathlib import Path

import pytest

from dsvlm.datasets import TinyBenchmarkDataset, llava_collate
from dsvlm.datasets.benchmark_table import load_benchmark_table
from dsvlm.datasets.tiny import ensure_shapes_world
from dsvlm.datasets.tiny.benchmarks import (answer_vocabulary,
                                            write_tiny_benchmarks)
from dsvlm.datasets.tiny.scenes import COLORS, POSITIONS
from dsvlm.datasets.tiny.tokenizer import tiny_tokenizer
from dsvlm.registry import DATASETS

WORLD = dict(num_images_train=8, num_images_test=12, image_size=32,
             num_text_only=1)
OFFSET = 1_000_000
MME_PERCEPTION = ('existence', 'count', 'position', 'color', 'posters',
                  'celebrity', 'scene', 'landmark', 'artwork', 'OCR')


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    return ensure_shapes_world(tmp_path_factory.mktemp('w') / 'shapes',
                               **WORLD)


@pytest.fixture(scope='module')
def paths(world):
    return write_tiny_benchmarks(world)


def read_rows(path):
    with open(path, newline='', encoding='utf-8') as f:
        return list(csv.DictReader(f, delimiter='\t'))


def options_of(row):
    return [row[k] for k in 'ABCD' if row.get(k)]


def test_mcq_questions_answers_and_circular_rotations(world, paths):
    test = json.loads((Path(world) / 'test.json').read_text())
    rows = read_rows(paths['mcq'])
    by_index = {int(r['index']): r for r in rows}
    assert len(by_index) == len(rows)
    originals = [r for r in rows if int(r['index']) < OFFSET]
    assert [r['index'] for r in originals] == [str(j)
                                               for j in range(len(test))]
    assert rows[:len(test)] == originals  # originals first
    for j, (row, record) in enumerate(zip(originals, test)):
        qtype = record['question_type']
        answer = record['conversations'][1]['value']
        assert row['question'] == record['conversations'][0]['value'].replace(
            '<image>', '').strip()
        assert row['category'] == qtype and row['l2-category'] == 'perception'
        options = options_of(row)
        assert len(options) == min(4, len(answer_vocabulary(qtype, 3)))
        assert len(set(options)) == len(options)
        assert set(options) <= set(answer_vocabulary(qtype, 3))
        assert row[row['answer']] == answer
        assert len(row['image']) > 64  # a base64 image
        n = len(options)
        for k in range(1, n):
            variant = by_index[j + k * OFFSET]
            assert options_of(variant) == [options[(i + k) % n]
                                           for i in range(n)]
            assert variant[variant['answer']] == answer
            assert variant['image'] == str(j)  # a reference to the original
            assert variant['question'] == row['question']
        assert j + n * OFFSET not in by_index
    assert len(rows) == sum(len(options_of(r)) for r in originals)
    # the reader checks every answer against its row's options and resolves
    # the references
    table = load_benchmark_table(paths['mcq'])
    assert table.rows[len(test)].image == table.rows[0].image


def test_option_counts_per_question_type():
    assert answer_vocabulary('color', 3) == list(COLORS)
    assert answer_vocabulary('position', 3) == list(POSITIONS)
    assert answer_vocabulary('count', 3) == ['1', '2', '3']
    assert answer_vocabulary('count', 1) == ['1', '2']  # at least 2 options


def objects_asked(question, objects):
    """Whether the yes/no question holds for the scene's objects."""
    by_shape = {o['shape']: o for o in objects}
    if m := re.fullmatch(r'Is there an? (\w+) (\w+) in the image\?', question):
        return any(o['color'] == m[1] and o['shape'] == m[2] for o in objects)
    if m := re.fullmatch(r'Are there (\d) shapes in the image\?', question):
        return len(objects) == int(m[1])
    if question == 'Is there only one shape in the image?':
        return len(objects) == 1
    if m := re.fullmatch(r'Is the (\w+) (\w+) at the ([\w ]+)\?', question):
        return by_shape[m[2]]['color'] == m[1] and (
            by_shape[m[2]]['position'] == m[3])
    if m := re.fullmatch(r'Is the (\w+) (\w+)\?', question):
        return by_shape[m[1]]['color'] == m[2]
    raise AssertionError(f'unexpected question {question!r}')


def test_yes_no_pairs(world, paths):
    scenes = json.loads((Path(world) / 'scenes.json').read_text())
    rows = read_rows(paths['yesno'])
    assert list(rows[0]) == ['index', 'image', 'question', 'answer',
                             'category', 'image_path']
    assert [r['index'] for r in rows] == [str(i) for i in range(len(rows))]
    pairs = defaultdict(list)
    for row in rows:
        pairs[row['image_path']].append(row)
    assert len(pairs) == WORLD['num_images_test'] == len(rows) // 2
    for name, (first, second) in pairs.items():
        assert [first['answer'], second['answer']] == ['Yes', 'No']
        assert first['category'] == second['category'] in MME_PERCEPTION
        assert second['image'] == first['index']  # a reference
        for row in (first, second):
            question = row['question']
            assert question.endswith('? Please answer yes or no.')
            holds = objects_asked(question[:-len(' Please answer yes or no.')],
                                  scenes[name]['objects'])
            assert holds == (row['answer'] == 'Yes'), (name, question)
    categories = [r['category'] for r in rows[::2]]
    assert set(categories) == {'existence', 'count', 'position', 'color'}
    table = load_benchmark_table(paths['yesno'])
    assert table.rows[1].image == table.rows[0].image


def test_files_are_deterministic_and_reused(world, paths, tmp_path):
    again = write_tiny_benchmarks(world, out_dir=tmp_path / 'again')
    for name in ('mcq', 'yesno'):
        assert filecmp.cmp(paths[name], again[name], shallow=False)
    mtime = again['mcq'].stat().st_mtime_ns
    assert write_tiny_benchmarks(world, out_dir=tmp_path / 'again') == again
    assert again['mcq'].stat().st_mtime_ns == mtime  # reused, not rewritten
    other = ensure_shapes_world(tmp_path / 'other', **dict(WORLD, seed=1))
    with pytest.raises(ValueError, match='other parameters'):
        write_tiny_benchmarks(other, out_dir=tmp_path / 'again')


def test_dataset_from_a_config(world, paths):
    tokenizer = tiny_tokenizer(str(world), **WORLD)
    common = dict(type='TinyBenchmarkDataset', data_root=str(world),
                  world=WORLD, tokenizer=tokenizer,
                  image_processor=dict(type='clip_image_processor',
                                       image_size=32),
                  template=dict(name='vicuna_v1', system=''))
    mcq = DATASETS.build(dict(common, benchmark='mcq'))
    assert isinstance(mcq, TinyBenchmarkDataset)
    assert mcq.prompt_style == 'multiple_choice'
    assert mcq.data_file == str(paths['mcq'])
    sample = mcq[0]['data_sample']
    assert sample['benchmark'] == 'tiny_mcq'
    assert sample['prompt'].endswith(
        "Answer with the option's letter from the given choices directly. "
        'ASSISTANT:')
    yesno = DATASETS.build(dict(common, benchmark='yesno', max_samples=4))
    assert yesno.prompt_style == 'yes_no' and len(yesno) == 4
    assert yesno.num_rows == 2 * WORLD['num_images_test']
    assert ' Please answer yes or no.' not in yesno[0]['data_sample']['prompt']
    batch = llava_collate([yesno[0], yesno[1]])
    assert batch['inputs']['pixel_values'].shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match='choose one of mcq, yesno'):
        DATASETS.build(dict(common, benchmark='mme'))
