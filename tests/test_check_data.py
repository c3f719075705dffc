"""tools/check_data.py reports every problem of a config's data."""
import json
import os.path as osp
import subprocess
import sys

import pytest
from PIL import Image

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(REPO, 'tools'))
import check_data  # noqa: E402


def conv(question, answer=None):
    turns = [{'from': 'human', 'value': question}]
    if answer is not None:
        turns.append({'from': 'gpt', 'value': answer})
    return turns


GOOD = {'id': 'good', 'image': 'ok.png',
        'conversations': conv('<image>\nColour?', 'Red.')}
TRAIN = [
    GOOD,
    {'id': 'gone', 'image': 'missing.png',
     'conversations': conv('<image>\nQ?', 'A.')},
    {'id': 'broken', 'image': 'broken.png',
     'conversations': conv('<image>\nQ?', 'A.')},
    {'id': 'mute', 'conversations': conv('Anyone?')},
    {'id': 'long', 'conversations': conv(
        'Count.', ' '.join(f'number{i}' for i in range(100)))},
]
VAL_LINES = [
    json.dumps(dict(GOOD, id='v_good')),
    '{"id": "v_bad", "conversations": [',
    json.dumps(dict(GOOD, id='v_gone', image='v_missing.png')),
]
CONFIG = """
tokenizer = dict(type='pretrained_tokenizer', path={tok!r})
image_processor = dict(type='clip_image_processor', image_size=8)
template = 'vicuna_v1'
max_length = 100
train_dataloader = dict(batch_size=2, dataset=dict(
    type='LlavaDataset', ann_file={train!r}, image_folder={images!r}))
val_dataloader = dict(batch_size=2, dataset=dict(
    type='LlavaDataset', ann_file={val!r}, image_folder={images!r},
    test_mode=True))
test_dataloader = val_dataloader
"""


@pytest.fixture
def config(tmp_path, test_tokenizer):
    images = tmp_path / 'images'
    images.mkdir()
    Image.new('RGB', (6, 4), (200, 0, 0)).save(images / 'ok.png')
    (images / 'broken.png').write_bytes(b'\x89PNG truncated')
    test_tokenizer.save_pretrained(tmp_path / 'tok')
    (tmp_path / 'train.json').write_text(json.dumps(TRAIN))
    (tmp_path / 'val.jsonl').write_text('\n'.join(VAL_LINES) + '\n')
    (tmp_path / 'good.json').write_text(json.dumps([GOOD]))
    path = tmp_path / 'config.py'
    path.write_text(CONFIG.format(
        tok=str(tmp_path / 'tok'), train=str(tmp_path / 'train.json'),
        val=str(tmp_path / 'val.jsonl'), images=str(images)))
    return str(path)


def problem_lines(output):
    return [line.strip() for line in output.splitlines()
            if line.startswith('  [')]


def test_reports_every_problem(config, capsys):
    assert check_data.main([config]) == 1
    out = capsys.readouterr().out
    lines = problem_lines(out)
    assert len(lines) == 6  # val == test is checked once
    expected = [('missing_image', "id 'gone'", 'missing.png'),
                ('unreadable_image', "id 'broken'", 'broken.png'),
                ('no_assistant', "id 'mute'", 'train.json'),
                ('over_length', "id 'long'", 'max_length=100'),
                ('bad_json', 'val.jsonl, line 2', ''),
                ('missing_image', "id 'v_gone'", 'v_missing.png')]
    for kind, where, what in expected:
        assert any(f'[{kind}]' in line and where in line and what in line
                   for line in lines), (kind, where, lines)
    assert ('summary: bad_json: 1, missing_image: 2, no_assistant: 1, '
            'over_length: 1, unreadable_image: 1') in out


def test_split_and_cfg_options(config, capsys):
    assert check_data.main([config, '--split', 'train', '--cfg-options',
                            'max_length=10000']) == 1
    lines = problem_lines(capsys.readouterr().out)
    assert len(lines) == 3
    assert not any('over_length' in line or 'val.jsonl' in line
                   for line in lines)


def test_clean_data_passes(config, tmp_path, capsys):
    good = str(tmp_path / 'good.json')
    assert check_data.main([
        config, '--cfg-options', f'train_dataloader.dataset.ann_file={good}',
        f'val_dataloader.dataset.ann_file={good}',
        f'test_dataloader.dataset.ann_file={good}']) == 0
    assert 'no problems found' in capsys.readouterr().out


def test_parallel_check_finds_the_same(config):
    from mmengine.config import Config

    from dsvlm.engine.config import complete_config
    cfg = complete_config(Config.fromfile(config), world_size=1)
    dataset = check_data.build_for_check(cfg.train_dataloader.dataset)
    serial, serial_lengths = check_data.check_dataset(dataset)
    parallel, parallel_lengths = check_data.check_dataset(
        dataset, workers=2, chunk=1)
    assert [str(p) for p in parallel] == [str(p) for p in serial]
    assert len(serial) == 4 and parallel_lengths == serial_lengths


def test_runs_as_a_script(config):
    result = subprocess.run([sys.executable, 'tools/check_data.py', config,
                             '--split', 'val', '--no-decode'],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
    assert 'summary: bad_json: 1, missing_image: 1' in result.stdout


def test_lengths_count_the_image_features(config, capsys):
    """With enough image features the image sample's answer falls beyond
    max_length=100: check_data names it; the lengths line counts the
    features."""
    from mmengine.config import Config

    from dsvlm.constants import IGNORE_INDEX
    from dsvlm.engine.config import complete_config
    assert check_data.main([config, '--split', 'train']) == 1
    out = capsys.readouterr().out
    assert 'tokens after splicing: min ' in out
    assert not any('no_supervision' in line for line in problem_lines(out))
    cfg = complete_config(Config.fromfile(config), world_size=1)
    good = check_data.build_for_check(cfg.train_dataloader.dataset)[0]
    first_answer = int((good['labels'] != IGNORE_INDEX).nonzero()[0])
    features = 101 - first_answer  # the answer starts at position 100
    assert check_data.main([config, '--split', 'train', '--cfg-options',
                            f'num_image_tokens={features}']) == 1
    lines = problem_lines(capsys.readouterr().out)
    assert any('[no_supervision]' in line and "id 'good'" in line and
               f'image: {features}' in line and 'cuts all' in line
               for line in lines), lines
