"""Bad samples during a run: stop with the sample named, or record and
replace them (keeping batch shapes and step counts), and stop once they
pass a fraction of the file."""
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler

from dsvlm.datasets import DataError, llava_collate
from dsvlm.datasets.bad_samples import BadDataLimitError
from dsvlm.engine.config import complete_config
from dsvlm.registry import DATASETS


def conversation(question='<image>\nColour?', answer='Red.'):
    return [{'from': 'human', 'value': question},
            {'from': 'gpt', 'value': answer}]


# ids say what is wrong with a sample; 'ok*' samples are usable
RECORDS = [
    {'id': 'ok0', 'image': 'good.png', 'conversations': conversation()},
    {'id': 'missing', 'image': 'gone.png', 'conversations': conversation()},
    {'id': 'text0', 'conversations': conversation('Say hi.', 'Hi.')},
    {'id': 'broken', 'image': 'broken.png', 'conversations': conversation()},
    {'id': 'ok1', 'image': 'good.png', 'conversations': conversation()},
    {'id': 'long', 'image': 'good.png', 'conversations': conversation(
        '<image>\n' + 'Describe the picture in detail. ' * 20, 'Red.')},
    {'id': 'text1', 'conversations': conversation('Say bye.', 'Bye.')},
    {'id': 'ok2', 'image': 'good.png', 'conversations': conversation()},
]
BAD = {'missing': 'missing_image', 'broken': 'unreadable_image',
       'long': 'no_supervision'}


@pytest.fixture
def data_dir(tmp_path):
    (tmp_path / 'images').mkdir()
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(
        tmp_path / 'images' / 'good.png')
    (tmp_path / 'images' / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n' +
                                                     bytes(100))
    (tmp_path / 'ann.json').write_text(json.dumps(RECORDS))
    return tmp_path


def dataset_cfg(data_dir, tokenizer, **kwargs):
    # 'long' has its answer beyond max_length: no supervised token left
    cfg = dict(type='LlavaDataset', ann_file=str(data_dir / 'ann.json'),
               image_folder=str(data_dir / 'images'), tokenizer=tokenizer,
               image_processor=dict(type='clip_image_processor',
                                    image_size=8),
               template='vicuna_v1', max_length=100, num_image_tokens=4)
    cfg.update(kwargs)
    return cfg


def build(data_dir, tokenizer, **kwargs):
    return DATASETS.build(dataset_cfg(data_dir, tokenizer, **kwargs))


def skipping(data_dir, tokenizer, max_fraction=1.0, **kwargs):
    return build(data_dir, tokenizer, bad_samples=dict(
        policy='skip', max_fraction=max_fraction,
        record_file=str(data_dir / 'work' / 'bad_samples.jsonl')), **kwargs)


def records(data_dir):
    path = data_dir / 'work' / 'bad_samples.jsonl'
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_stop_is_the_default_and_names_the_sample(data_dir, test_tokenizer):
    dataset = build(data_dir, test_tokenizer)
    assert dataset[0]['data_sample']['id'] == 'ok0'
    with pytest.raises(DataError, match=r"\[missing_image\] .*ann.json, "
                       r"record 1, id 'missing': image not found"):
        dataset[1]
    with pytest.raises(DataError, match=r"\[no_supervision\] .*id 'long'"):
        dataset[5]


def test_skip_replaces_with_the_next_usable_sample_of_the_same_modality(
        data_dir, test_tokenizer):
    dataset = skipping(data_dir, test_tokenizer)
    ids = [dataset[i]['data_sample']['id'] for i in range(len(dataset))]
    # 'missing' and 'broken' are replaced by the next image sample, not by
    # the text-only one in between; 'long' by the next image sample
    assert ids == ['ok0', 'ok1', 'text0', 'ok1', 'ok1', 'ok2', 'text1',
                   'ok2']
    recorded = records(data_dir)
    assert {r['id']: r['kind'] for r in recorded} == BAD
    by_id = {r['id']: r for r in recorded}
    assert by_id['broken']['index'] == 3
    assert 'broken.png' in by_id['broken']['message']
    # a second epoch finds the same samples bad and records nothing new
    [dataset[i] for i in range(len(dataset))]
    assert len(records(data_dir)) == len(BAD)
    assert dataset.bad_samples.count(dataset.ann_file) == len(BAD)


def test_skips_are_logged_with_a_count(data_dir, test_tokenizer,
                                       logged_warnings):
    dataset = skipping(data_dir, test_tokenizer)
    dataset[1], dataset[3]
    assert any("skipped sample: [unreadable_image]" in w and
               '2 samples of' in w and 'bad_samples.jsonl' in w
               for w in logged_warnings)


def test_the_run_stops_past_the_fraction(data_dir, test_tokenizer):
    # 8 samples, max_fraction 0.25: 2 skips allowed, the third stops
    dataset = skipping(data_dir, test_tokenizer, max_fraction=0.25)
    dataset[1], dataset[3]
    with pytest.raises(BadDataLimitError,
                       match=r'3 of the 8 samples of .*ann.json could not be '
                       r'used, more than bad_samples.max_fraction=0.25 \(2 '
                       r'samples\).*bad_samples.jsonl'):
        dataset[5]


def _read_all(args):
    cfg, rank = args
    dataset = DATASETS.build(cfg)
    loader = DataLoader(dataset, batch_size=2, collate_fn=llava_collate,
                        sampler=DistributedSampler(dataset, num_replicas=2,
                                                   rank=rank, shuffle=False),
                        num_workers=2)
    return [(tuple(b['inputs']['input_ids'].shape[:1]),
             [s['id'] for s in b['data_samples']]) for b in loader]


def test_ranks_and_workers_keep_their_step_counts_and_share_the_count(
        data_dir, test_tokenizer):
    """Two ranks with two dataloader workers each: every rank gets all its
    batches, full, and the record file counts each bad sample once."""
    cfg = dataset_cfg(data_dir, test_tokenizer, bad_samples=dict(
        policy='skip', max_fraction=0.5,
        record_file=str(data_dir / 'work' / 'bad_samples.jsonl')))
    # not a Pool: its daemonic processes cannot start dataloader workers
    with ProcessPoolExecutor(
            2, mp_context=multiprocessing.get_context('fork')) as pool:
        per_rank = list(pool.map(_read_all, [(cfg, 0), (cfg, 1)]))
    for batches in per_rank:
        assert [shape for shape, _ in batches] == [(2, ), (2, )]
    seen = [i for batches in per_rank for _, ids in batches for i in ids]
    assert len(seen) == len(RECORDS) and not set(seen) & set(BAD)
    assert {r['id'] for r in records(data_dir)} == set(BAD)
    dataset = DATASETS.build(cfg)
    assert dataset.bad_samples.count(dataset.ann_file) == len(BAD)


def test_invalid_records_are_skipped_and_counted(data_dir, test_tokenizer):
    bad = dict(RECORDS[0], id='norole', conversations=[
        {'from': 'human', 'value': '<image>\nColour?'}])
    (data_dir / 'ann.json').write_text(json.dumps(RECORDS + [bad]))
    dataset = skipping(data_dir, test_tokenizer)
    assert len(dataset) == len(RECORDS)
    assert [r['id'] for r in records(data_dir)] == ['norole']
    with pytest.raises(BadDataLimitError, match='1 of the 9 samples'):
        skipping(data_dir, test_tokenizer, max_fraction=0.1)


def test_a_test_set_cannot_skip(data_dir, test_tokenizer):
    with pytest.raises(ValueError, match='test_mode dataset cannot skip'):
        skipping(data_dir, test_tokenizer, test_mode=True)


def test_configs_record_skips_in_the_work_dir(data_dir, test_tokenizer):
    cfg = dict(work_dir=str(data_dir / 'run'), train_dataloader=dict(
        batch_size=2, dataset=dataset_cfg(
            data_dir, test_tokenizer,
            bad_samples=dict(policy='skip', max_fraction=0.5))))
    complete_config(cfg, world_size=1)
    dataset = DATASETS.build(cfg['train_dataloader']['dataset'])
    dataset[3]
    lines = (data_dir / 'run' / 'bad_samples.jsonl').read_text().splitlines()
    assert [json.loads(line)['id'] for line in lines] == ['broken']


def test_replacements_keep_the_item_shape(data_dir, test_tokenizer):
    dataset = skipping(data_dir, test_tokenizer)
    good, replaced = dataset[0], dataset[1]
    assert replaced['pixel_values'].shape == good['pixel_values'].shape
    assert torch.equal(replaced['input_ids'], good['input_ids'])
