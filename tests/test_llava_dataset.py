"""LlavaDataset items, test mode, bad-input errors, truncation, collate."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from dsvlm.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from dsvlm.datasets import DataError, LlavaDataset, llava_collate
from dsvlm.registry import DATASETS, FUNCTIONS

MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])
SYSTEM = ('A chat between a curious user and an artificial intelligence '
          'assistant. The assistant gives helpful, detailed, and polite '
          "answers to the user's questions.")
RECORDS = [
    {'id': 'img1', 'image': 'red.png', 'conversations': [
        {'from': 'human', 'value': 'What colour? <image>'},
        {'from': 'gpt', 'value': 'Red.'}]},
    {'id': 'txt1', 'conversations': [
        {'from': 'human', 'value': 'Say hi.'},
        {'from': 'gpt', 'value': 'Hi.'}]},
    {'id': 'img2', 'image': 'sub/blue.png', 'conversations': [
        {'from': 'human', 'value': '<image>\nShape?'},
        {'from': 'gpt', 'value': 'A square.'},
        {'from': 'human', 'value': 'Where is it?'},
        {'from': 'gpt', 'value': 'In the middle of the image.'}]},
]
RED = np.zeros((4, 8, 3), np.uint8)  # height 4, width 8
RED[..., 0] = 200


def decode(ids, tokenizer):
    parts = [[]]
    for i in ids.tolist():
        parts.append([]) if i == IMAGE_TOKEN_INDEX else parts[-1].append(i)
    return '<image>'.join(tokenizer.decode(p, skip_special_tokens=False)
                          for p in parts)


@pytest.fixture
def data_dir(tmp_path):
    (tmp_path / 'images' / 'sub').mkdir(parents=True)
    Image.fromarray(RED).save(tmp_path / 'images' / 'red.png')
    Image.new('RGB', (5, 5), (0, 0, 255)).save(
        tmp_path / 'images' / 'sub' / 'blue.png')
    (tmp_path / 'ann.json').write_text(json.dumps(RECORDS, indent=1))
    (tmp_path / 'ann.jsonl').write_text(
        '\n'.join(json.dumps(r) for r in RECORDS) + '\n')
    return tmp_path


def make(data_dir, tokenizer, ann='ann.json', **kwargs):
    cfg = dict(type='LlavaDataset', ann_file=str(data_dir / ann),
               image_folder=str(data_dir / 'images'), tokenizer=tokenizer,
               image_processor=dict(type='clip_image_processor', image_size=8),
               template='vicuna_v1')
    cfg.update(kwargs)
    return DATASETS.build(cfg)


def test_items(data_dir, test_tokenizer):
    dataset = make(data_dir, test_tokenizer)
    assert isinstance(dataset, LlavaDataset) and len(dataset) == 3
    item = dataset[0]
    assert item['input_ids'].dtype == torch.long
    assert decode(item['input_ids'], test_tokenizer) == (
        f'<s>{SYSTEM} USER: <image>\nWhat colour? ASSISTANT: Red.</s>')
    supervised = item['labels'][item['labels'] != IGNORE_INDEX]
    assert test_tokenizer.decode(supervised) == ' Red.</s>'
    assert item['labels'][item['input_ids'] == IMAGE_TOKEN_INDEX].tolist() == [
        IGNORE_INDEX]
    padded = np.empty((8, 8, 3), np.uint8)  # pad 8x4 to 8x8 in the mean colour
    padded[:] = [int(m * 255) for m in MEAN]
    padded[2:6] = RED
    expected = ((padded / 255 - MEAN) / STD).transpose(2, 0, 1)
    assert item['pixel_values'].dtype == torch.float32
    np.testing.assert_allclose(item['pixel_values'].numpy(), expected,
                               atol=1e-5)
    assert item['data_sample']['id'] == 'img1'
    assert item['data_sample']['index'] == 0
    text_only = dataset[1]
    assert text_only['pixel_values'] is None
    assert IMAGE_TOKEN_INDEX not in text_only['input_ids']
    assert decode(text_only['input_ids'], test_tokenizer) == (
        f'<s>{SYSTEM} USER: Say hi. ASSISTANT: Hi.</s>')


def test_jsonl_gives_the_same_items(data_dir, test_tokenizer):
    a, b = make(data_dir, test_tokenizer), make(data_dir, test_tokenizer,
                                                ann='ann.jsonl')
    assert len(a) == len(b) == 3
    for i in range(3):
        assert torch.equal(a[i]['input_ids'], b[i]['input_ids'])
        assert torch.equal(a[i]['labels'], b[i]['labels'])


def test_cached_items_equal_fresh_ones_and_need_no_file(data_dir,
                                                       test_tokenizer):
    fresh = make(data_dir, test_tokenizer)
    cached = make(data_dir, test_tokenizer, cache_items=True)
    first = [cached[i] for i in range(3)]
    (data_dir / 'images' / 'red.png').unlink()  # second reads: from memory
    with pytest.raises(DataError, match='red.png'):
        fresh[0]
    for i in range(3):
        again, reference = cached[i], first[i]
        assert torch.equal(again['input_ids'], reference['input_ids'])
        assert torch.equal(again['labels'], reference['labels'])
        assert again['data_sample'] == reference['data_sample']
    assert torch.equal(cached[0]['pixel_values'], first[0]['pixel_values'])
    # a caller that edits its item's data_sample leaves the cache as it was
    cached[2]['data_sample']['id'] = 'changed'
    assert cached[2]['data_sample']['id'] == first[2]['data_sample']['id']


def test_test_mode(data_dir, test_tokenizer):
    item = make(data_dir, test_tokenizer, test_mode=True)[2]
    prompt = (f'{SYSTEM} USER: <image>\nShape? ASSISTANT: A square.</s>'
              'USER: Where is it? ASSISTANT:')
    assert item['data_sample']['prompt'] == prompt
    assert item['data_sample']['gt_answer'] == 'In the middle of the image.'
    assert decode(item['input_ids'], test_tokenizer) == '<s>' + prompt
    assert (item['labels'] == IGNORE_INDEX).all()
    assert len(item['labels']) == len(item['input_ids'])


def test_modality_lengths_and_max_samples(data_dir, test_tokenizer):
    dataset = make(data_dir, test_tokenizer)
    # words: 'What colour? <image>' + 'Red.' = 4; 'Say hi.' + 'Hi.' = 3;
    # '<image>\nShape?' 2 + 'A square.' 2 + 'Where is it?' 3 + 'In the middle
    # of the image.' 6 = 13
    assert dataset.modality_lengths == [4, -3, 13]
    assert dataset.lengths == [132, 3, 141]
    assert len(make(data_dir, test_tokenizer, max_samples=2)) == 2


def write(path, text):
    path.write_text(text)
    return path


def test_malformed_json_names_file_and_line(data_dir, test_tokenizer):
    write(data_dir / 'bad.json',
          '[\n {"id": "a",\n  "conversations": [}\n]')
    with pytest.raises(DataError, match=r'bad\.json.*line 3'):
        make(data_dir, test_tokenizer, ann='bad.json')


def test_malformed_jsonl_line(data_dir, test_tokenizer):
    lines = [json.dumps(RECORDS[0]), '{"id": "broken", ',
             json.dumps(RECORDS[1])]
    write(data_dir / 'bad.jsonl', '\n'.join(lines))
    with pytest.raises(DataError, match=r'bad\.jsonl, line 2\b'):
        make(data_dir, test_tokenizer, ann='bad.jsonl')


def test_non_utf8_jsonl_names_each_bad_line_and_hides_nothing(
        data_dir, test_tokenizer):
    """A Latin-1 line is named (line and column), and the file's other
    problems are still reported."""
    lines = [json.dumps(RECORDS[0]).encode(),
             json.dumps(dict(RECORDS[1], id='caf\u00e9'),
                        ensure_ascii=False).encode('latin-1'),
             b'{"id": "broken", ']
    (data_dir / 'bad.jsonl').write_bytes(b'\n'.join(lines))
    with pytest.raises(DataError) as e:
        make(data_dir, test_tokenizer, ann='bad.jsonl')
    message = str(e.value)
    assert '[bad_encoding]' in message and 'bad.jsonl, line 2' in message
    assert 'byte 0xe9' in message
    assert '[bad_json]' in message and 'line 3' in message
    dataset = make(data_dir, test_tokenizer, ann='bad.jsonl',
                   skip_invalid=True)
    assert len(dataset) == 1
    assert [p.kind for p in dataset.problems] == ['bad_encoding', 'bad_json']


def test_non_utf8_json_names_the_line(data_dir, test_tokenizer):
    text = json.dumps(RECORDS, indent=1, ensure_ascii=False)
    text = text.replace('Red.', 'Rouge fonc\u00e9.')
    (data_dir / 'bad.json').write_bytes(text.encode('latin-1'))
    line = text[:text.index('Rouge')].count('\n') + 1
    with pytest.raises(DataError, match=rf'\[bad_encoding\] .*bad\.json, '
                       rf'line {line}\b.*not UTF-8'):
        make(data_dir, test_tokenizer, ann='bad.json')


@pytest.mark.parametrize('path', ['/etc/passwd', '../../secret.png',
                                  'sub/../../x.png'])
def test_image_paths_outside_the_image_folder_are_refused(
        data_dir, test_tokenizer, path):
    records = [RECORDS[1], dict(RECORDS[0], id='escape', image=path)]
    write(data_dir / 'bad.json', json.dumps(records))
    with pytest.raises(DataError, match=r"\[bad_image_path\].*id 'escape'"
                       r'.*leaves the image folder'):
        make(data_dir, test_tokenizer, ann='bad.json')
    # a path that only passes through a subfolder stays allowed
    ok = [dict(RECORDS[0], image='sub/../red.png')]
    write(data_dir / 'ok.json', json.dumps(ok))
    assert len(make(data_dir, test_tokenizer, ann='ok.json')) == 1


BAD_RECORDS = [
    {'id': 'noans', 'conversations': [{'from': 'human', 'value': 'Hi?'}]},
    {'id': 'twice', 'conversations': [
        {'from': 'human', 'value': 'a'}, {'from': 'human', 'value': 'b'},
        {'from': 'gpt', 'value': 'c'}]},
    {'id': 'noconv'},
]


@pytest.mark.parametrize('record,pattern', [
    (BAD_RECORDS[0], r"record 1, id 'noans'.*no assistant"),
    (BAD_RECORDS[1], r"record 1, id 'twice'.*alternate"),
    (BAD_RECORDS[2], r"record 1, id 'noconv'.*conversations"),
])
def test_bad_record_names_id(data_dir, test_tokenizer, record, pattern):
    write(data_dir / 'bad.json', json.dumps([RECORDS[1], record]))
    with pytest.raises(DataError, match=pattern):
        make(data_dir, test_tokenizer, ann='bad.json')


def test_skip_invalid_keeps_good_records(data_dir, test_tokenizer):
    write(data_dir / 'bad.json', json.dumps(RECORDS + BAD_RECORDS))
    dataset = make(data_dir, test_tokenizer, ann='bad.json', skip_invalid=True)
    assert len(dataset) == 3
    assert [(p.kind, p.sample_id) for p in dataset.problems] == [
        ('no_assistant', 'noans'), ('bad_roles', 'twice'),
        ('bad_record', 'noconv')]


def test_missing_image_names_path_id_and_file(data_dir, test_tokenizer):
    records = [dict(RECORDS[0], id='lost', image='nope/missing.png')]
    write(data_dir / 'lost.json', json.dumps(records))
    dataset = make(data_dir, test_tokenizer, ann='lost.json')
    with pytest.raises(DataError) as info:
        dataset[0]
    message = str(info.value)
    assert 'nope/missing.png' in message and "'lost'" in message
    assert 'lost.json' in message and 'missing_image' in message


def test_unreadable_image(data_dir, test_tokenizer):
    (data_dir / 'images' / 'broken.png').write_bytes(b'not a png at all')
    write(data_dir / 'b.json', json.dumps([dict(RECORDS[0], id='brk',
                                                image='broken.png')]))
    with pytest.raises(DataError, match=r"id 'brk'.*broken\.png"):
        make(data_dir, test_tokenizer, ann='b.json')[0]


CAPTIONS = [
    {'id': f'cap{k}', 'image': 'red.png', 'conversations': [
        {'from': 'human', 'value': '<image>\nDescribe.'},
        {'from': 'gpt', 'value': caption}]}
    for k, caption in enumerate(['A red rectangle on a black background.',
                                 'Red.', 'A wide red rectangle, centred.'])
]


def test_over_length_is_truncated_counted_and_logged(
        data_dir, test_tokenizer, logged_warnings):
    write(data_dir / 'caps.json', json.dumps(CAPTIONS))
    full = make(data_dir, test_tokenizer, ann='caps.json', template='plain')
    assert len(full[1]['input_ids']) <= 8 < len(full[2]['input_ids'])
    dataset = make(data_dir, test_tokenizer, ann='caps.json',
                   template='plain', max_length=8)
    item = dataset[0]
    assert torch.equal(item['input_ids'], full[0]['input_ids'][:8])
    assert torch.equal(item['labels'], full[0]['labels'][:8])
    assert dataset.num_truncated == 1
    dataset[0], dataset[1]  # the same sample again, and a short one
    assert dataset.num_truncated == 1
    dataset[2]
    assert dataset.num_truncated == 2
    truncation_logs = [m for m in logged_warnings if 'truncated' in m]
    assert len(truncation_logs) == 2
    first, second = truncation_logs
    assert "'cap0'" in first and 'max_length=8' in first
    assert "'cap2'" in second and '2 samples truncated' in second


def test_max_length_that_cuts_the_image_is_an_error(data_dir, test_tokenizer):
    dataset = make(data_dir, test_tokenizer, max_length=10)  # system > 10
    with pytest.raises(DataError, match=r"id 'img1'.*cut the image"):
        dataset[0]


def test_plain_needs_an_image(data_dir, test_tokenizer):
    with pytest.raises(DataError, match=r"id 'txt1'.*needs an image"):
        make(data_dir, test_tokenizer, template='plain')


def item(n, image=None, sample_id='s'):
    return dict(input_ids=torch.arange(1, n + 1),
                labels=torch.arange(11, n + 11),
                pixel_values=image, data_sample=dict(id=sample_id))


def test_collate_right_pads_and_fills_missing_images():
    image = torch.rand(3, 4, 4)
    batch = llava_collate([item(2, image, 'a'), item(4, None, 'b'),
                           item(3, image * 2, 'c')])
    inputs = batch['inputs']
    assert inputs['input_ids'].tolist() == [[1, 2, 0, 0], [1, 2, 3, 4],
                                            [1, 2, 3, 0]]
    assert inputs['labels'].tolist() == [[11, 12, -100, -100],
                                         [11, 12, 13, 14], [11, 12, 13, -100]]
    assert inputs['attention_mask'].dtype == torch.bool
    assert inputs['attention_mask'].sum(1).tolist() == [2, 4, 3]
    assert inputs['has_image'].tolist() == [True, False, True]
    assert inputs['pixel_values'].shape == (3, 3, 4, 4)
    assert torch.equal(inputs['pixel_values'][0], image)
    assert torch.equal(inputs['pixel_values'][1], torch.zeros(3, 4, 4))
    assert torch.equal(inputs['pixel_values'][2], image * 2)
    assert [s['id'] for s in batch['data_samples']] == ['a', 'b', 'c']
    text_only = llava_collate([item(2), item(1)])
    assert text_only['inputs']['pixel_values'] is None
    assert text_only['inputs']['has_image'].tolist() == [False, False]


def test_collate_from_the_registry_with_a_dataloader(data_dir, test_tokenizer):
    from mmengine.registry import FUNCTIONS as MMENGINE_FUNCTIONS
    collate = MMENGINE_FUNCTIONS.get('llava_collate')  # as Runner looks it up
    assert collate is llava_collate is FUNCTIONS.get('llava_collate')
    dataset = make(data_dir, test_tokenizer)
    loader = torch.utils.data.DataLoader(dataset, batch_size=3,
                                         collate_fn=collate)
    batch = next(iter(loader))
    lengths = [len(dataset[i]['input_ids']) for i in range(3)]
    assert batch['inputs']['input_ids'].shape == (3, max(lengths))
    assert batch['inputs']['attention_mask'].sum(1).tolist() == lengths
    assert batch['inputs']['has_image'].tolist() == [True, False, True]


def test_image_token_is_moved_or_added_to_the_front():
    from dsvlm.datasets.annotations import normalize_conversations
    turns = [{'from': 'human', 'value': 'Q? <image>'},
             {'from': 'gpt', 'value': 'A.'}]
    assert normalize_conversations({'image': 'a.png', 'conversations': turns})[
        0]['value'] == '<image>\nQ?'
    no_token = [{'from': 'user', 'value': 'Q?'},
                {'from': 'assistant', 'value': 'A.'}]
    assert normalize_conversations({'image': 'a.png',
                                    'conversations': no_token}) == [
        {'from': 'human', 'value': '<image>\nQ?'},
        {'from': 'gpt', 'value': 'A.'}]
    assert normalize_conversations({'conversations': no_token})[0] == {
        'from': 'human', 'value': 'Q?'}


@pytest.mark.parametrize('record', [
    {'id': 'two', 'image': 'a.png', 'conversations': [
        {'from': 'human', 'value': '<image> <image> Q?'},
        {'from': 'gpt', 'value': 'A.'}]},
    {'id': 'late', 'image': 'a.png', 'conversations': [
        {'from': 'human', 'value': 'Q?'}, {'from': 'gpt', 'value': 'A.'},
        {'from': 'human', 'value': '<image>\nQ2?'},
        {'from': 'gpt', 'value': 'A2.'}]},
    {'id': 'noimg', 'conversations': [
        {'from': 'human', 'value': '<image>\nQ?'},
        {'from': 'gpt', 'value': 'A.'}]},
])
def test_misplaced_image_tokens_are_errors(data_dir, test_tokenizer, record):
    write(data_dir / 'bad.json', json.dumps([record]))
    with pytest.raises(DataError, match=rf"id '{record['id']}'.*<image>"):
        make(data_dir, test_tokenizer, ann='bad.json')


def test_images_load_faithfully_or_are_named(tmp_path, test_tokenizer):
    """A 16-bit greyscale PNG reaches the encoder scaled (its 8-bit version,
    computed here with numpy), not binarised; a 1x20000 strip, an image over
    the pixel budget and a JPEG with a stray marker in its data are
    problems naming the sample."""
    images = tmp_path / 'images'
    images.mkdir()
    grey16 = (np.arange(64, dtype=np.uint32).reshape(8, 8) * 1040).astype(
        np.uint16)
    Image.fromarray(grey16).save(images / 'grey16.png')
    grey8 = np.round(grey16.astype(np.float64) * 255 / 65535).astype(np.uint8)
    Image.fromarray(grey8).convert('RGB').save(images / 'grey8.png')
    Image.new('L', (1, 20000)).save(images / 'strip.png')
    Image.new('RGB', (300, 200)).save(images / 'big.png')
    jpeg = images / 'good.jpg'
    Image.fromarray(np.random.default_rng(0).integers(
        0, 255, (64, 64, 3), np.uint8)).save(jpeg, quality=90)
    data = bytearray(jpeg.read_bytes())
    data[len(data) // 2:len(data) // 2 + 2] = b'\xff\x13'
    (images / 'corrupt.jpg').write_bytes(bytes(data))
    names = ['grey16.png', 'grey8.png', 'strip.png', 'big.png', 'good.jpg',
             'corrupt.jpg']
    records = [{'id': n, 'image': n, 'conversations': [
        {'from': 'human', 'value': '<image>\nColour?'},
        {'from': 'gpt', 'value': 'Grey.'}]} for n in names]
    (tmp_path / 'ann.json').write_text(json.dumps(records))
    dataset = make(tmp_path, test_tokenizer, max_image_pixels=300 * 299)
    assert torch.equal(dataset[0]['pixel_values'], dataset[1]['pixel_values'])
    assert dataset[0]['pixel_values'].std() > 0.5  # a gradient, not 2 values
    kinds = {n: [p.kind for p in dataset.check_sample(i).problems]
             for i, n in enumerate(names)}
    assert kinds == {'grey16.png': [], 'grey8.png': [],
                     'strip.png': ['extreme_aspect_ratio'],
                     'big.png': ['image_too_large'], 'good.jpg': [],
                     'corrupt.jpg': ['corrupt_jpeg']}
    with pytest.raises(DataError, match=r"\[extreme_aspect_ratio\] .*id "
                       r"'strip.png': .*strip.png"):
        dataset[2]
    # the budget counts the padded square: 300x300 > 300*299
    assert make(tmp_path, test_tokenizer, max_image_pixels=300 * 300)[3]
    assert make(tmp_path, test_tokenizer, max_image_pixels=300 * 299,
                image_aspect_ratio='original')[3]
