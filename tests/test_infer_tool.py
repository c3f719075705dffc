"""tools/infer.py (and dsvlm/inference.py) on the tiny LLaVA config: answers
equal those of the test pipeline, batching does not change them, bad input
is named by file and line, and the output is never half-written."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from mmengine.registry import init_default_scope

from dsvlm.datasets import LlavaDataset
from dsvlm.datasets.collate import llava_collate
from dsvlm.datasets.errors import DataError
from dsvlm.datasets.tiny.shapes import ensure_shapes_world
from dsvlm.export import build_for_export
from dsvlm.export.export import image_aspect_ratio
from dsvlm.models.llava import LlavaModel
from test_export_tool import _checkpoint, _load_tiny, _options
from tool_loader import load_tool

init_default_scope('dsvlm')
infer_tool = load_tool('infer')
CONFIG = 'configs/tiny/llava_tiny.py'

QUESTIONS = [  # different lengths: batches are padded
    dict(image='test_00000.png', question='What color is the square?',
         question_type='color'),
    dict(image='test_00001.png',
         question='What shape is the green object in this picture?',
         id='q-2'),
    dict(question='What is two plus two?'),  # text-only
    dict(image='test_00002.png', question='How many objects?',
         extra=dict(nested=[1, 2])),
    dict(image='test_00003.png', question='Where is the red one?'),
]


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    """The config of a 48-image tiny world, a perturbed checkpoint of its
    model, the ``--cfg-options`` that load it, and its image folder."""
    root = tmp_path_factory.mktemp('infer')
    data_root = root / 'world'
    cfg = _load_tiny(CONFIG, data_root)
    checkpoint = root / 'iter_1.pth'
    _checkpoint(cfg, checkpoint)
    options = [f'{k}={v}' for k, v in _options(data_root).items()]
    world_root = ensure_shapes_world(str(data_root),
                                     **cfg.test_dataloader.dataset.world)
    return SimpleNamespace(cfg=cfg, checkpoint=str(checkpoint),
                           options=options,
                           images=Path(world_root) / 'images')


def _run(world, *args):
    # on the CPU: batch shapes choose no other kernels there
    return infer_tool.main([CONFIG, world.checkpoint, '--device', 'cpu',
                            *args, '--cfg-options', *world.options])


def _write_jsonl(path, lines):
    path.write_text(''.join(
        (line if isinstance(line, str) else json.dumps(line)) + '\n'
        for line in lines))
    return path


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_single_question_matches_the_test_pipeline(world, tmp_path, capsys):
    cfg, checkpoint, images = world.cfg, world.checkpoint, world.images
    question = 'What color is the square?'
    answer = _run(world, '--image', str(images / 'test_00000.png'),
                  '--question', question)
    assert capsys.readouterr().out == answer + '\n'  # the answer alone

    # the independent route: a LLaVA record through LlavaDataset (test mode)
    model = build_for_export(cfg, checkpoint)
    ann = tmp_path / 'one.json'
    ann.write_text(json.dumps([dict(id='one', image='test_00000.png',
                                    conversations=[
                                        {'from': 'human',
                                         'value': '<image>\n' + question},
                                        {'from': 'gpt', 'value': 'x'}])]))
    dataset = LlavaDataset(ann, str(images), model.tokenizer,
                           model.image_processor_cfg, model.template,
                           max_length=model.max_length,
                           image_aspect_ratio=image_aspect_ratio(cfg),
                           test_mode=True)
    batch = llava_collate([dataset[0]],
                          pad_token_id=model.tokenizer.pad_token_id)
    expected = model.predict(batch['inputs'], batch['data_samples'])
    assert expected[0]['pred_answer'] and answer == expected[0]['pred_answer']


def test_jsonl_batched_equals_one_at_a_time(world, tmp_path):
    images = world.images
    jsonl = _write_jsonl(tmp_path / 'questions.jsonl', [
        dict(q, image=str(images / q['image'])) if 'image' in q else q
        for q in QUESTIONS[:2]] + [''] + [  # a blank line is skipped
        dict(q, image=str(images / q['image'])) if 'image' in q else q
        for q in QUESTIONS[2:]])
    out_batched = tmp_path / 'out' / 'batched.jsonl'
    out_single = tmp_path / 'single.jsonl'
    _run(world, '--jsonl', str(jsonl), '--out', str(out_batched),
         '--batch-size', '2')
    _run(world, '--jsonl', str(jsonl), '--out', str(out_single),
         '--batch-size', '1')
    batched, single = _read_jsonl(out_batched), _read_jsonl(out_single)
    assert batched == single
    ids = [1, 'q-2', 4, 5, 6]  # line numbers where no id is given
    assert [r['id'] for r in batched] == ids
    answers = [r['answer'] for r in batched]
    assert all(isinstance(a, str) and a for a in answers)
    assert len(set(answers)) > 1
    for record, question in zip(batched, QUESTIONS):
        record = {k: v for k, v in record.items() if k not in ('id', 'answer')}
        question = {k: v for k, v in question.items() if k != 'id'}
        if 'image' in question:
            question['image'] = str(images / question['image'])
        assert record == question  # order and extra keys kept
    # relative images are found in the --image-folder
    relative = _write_jsonl(tmp_path / 'relative.jsonl', QUESTIONS[:2])
    out = tmp_path / 'relative_out.jsonl'
    _run(world, '--jsonl', str(relative), '--out', str(out),
         '--image-folder', str(images))
    assert [r['answer'] for r in _read_jsonl(out)] == answers[:2]
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == [
        'batched.jsonl']  # no temporary file left


def test_bad_lines_are_named_before_the_model_runs(world, tmp_path,
                                                   monkeypatch):
    images = world.images

    def no_model(*args, **kwargs):
        raise AssertionError('the model was built before the input checked')

    monkeypatch.setattr(infer_tool, 'build_inferencer', no_model)
    jsonl = _write_jsonl(tmp_path / 'bad.jsonl', [
        dict(image='test_00000.png', question='fine'),
        '{"image": "test_00001.png", "question": ',
        dict(image='test_00002.png', prompt='no question', id='p'),
        dict(image='missing.png', question='where is it?'),
        dict(question='text only'),
        dict(question='<image>\nbut no image'),
    ])
    out = tmp_path / 'answers.jsonl'
    with pytest.raises(DataError) as error:
        _run(world, '--jsonl', str(jsonl), '--out', str(out),
             '--image-folder', str(images))
    message = str(error.value)
    assert f'[bad_json] {jsonl}, line 2:' in message
    assert f"[bad_record] {jsonl}, line 3, id 'p': no 'question'" in message
    assert (f'[missing_image] {jsonl}, line 4: image not found: '
            f'{images / "missing.png"}') in message
    assert f'[bad_image_token] {jsonl}, line 6:' in message
    assert 'line 1' not in message and 'line 5' not in message
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ['bad.jsonl']


def test_unreadable_image_stops_with_its_line(world, tmp_path):
    images = world.images
    (tmp_path / 'broken.png').write_bytes(b'not a png')
    jsonl = _write_jsonl(tmp_path / 'q.jsonl', [
        dict(image=str(images / 'test_00000.png'), question='fine'),
        dict(image='broken.png', question='what?')])
    out = tmp_path / 'answers.jsonl'
    with pytest.raises(DataError, match=(
            rf'\[unreadable_image\] {jsonl}, line 2, id .2.: cannot read '
            rf'image {tmp_path / "broken.png"}')):
        _run(world, '--jsonl', str(jsonl), '--out', str(out),
             '--batch-size', '1')
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ['broken.png',
                                                          'q.jsonl']


def test_failure_midway_leaves_no_output(world, tmp_path, monkeypatch):
    images = world.images
    jsonl = _write_jsonl(tmp_path / 'q.jsonl', [
        dict(image=str(images / f'test_0000{k}.png'), question='What color?')
        for k in range(4)])
    out = tmp_path / 'answers.jsonl'
    calls = []
    predict = LlavaModel.predict

    def fail_second(self, inputs, data_samples=None):
        calls.append(len(data_samples))
        if len(calls) == 2:
            raise RuntimeError('out of memory')
        return predict(self, inputs, data_samples)

    monkeypatch.setattr(LlavaModel, 'predict', fail_second)
    with pytest.raises(RuntimeError, match='out of memory'):
        _run(world, '--jsonl', str(jsonl), '--out', str(out),
             '--batch-size', '2')
    assert calls == [2, 2]
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ['q.jsonl']
