"""The dataset and the model agree on the sequence length after splicing:
truncation happens once, in the dataset, counting the image as its
features; the model never truncates; a sample left without supervision is
a named error."""
import json

import numpy as np
import pytest
import torch
from mmengine.registry import init_default_scope
from PIL import Image

from dsvlm.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from dsvlm.datasets import DataError, llava_collate
from dsvlm.registry import DATASETS, MODELS
from tests.model_factory import tiny_vlm_cfg

init_default_scope('dsvlm')

NUM_FEATURES = 16  # tiny CLIP: (32 / 8)^2 patches
ANSWER = ' '.join(['the red circle is left of the blue square'] * 3)
RECORDS = [
    {'id': 'long', 'image': 'a.png', 'conversations': [
        {'from': 'human', 'value': '<image>\nDescribe it.'},
        {'from': 'gpt', 'value': ANSWER}]},
    {'id': 'short', 'image': 'a.png', 'conversations': [
        {'from': 'human', 'value': '<image>\nColour?'},
        {'from': 'gpt', 'value': 'Red.'}]},
]


@pytest.fixture
def data_dir(tmp_path):
    (tmp_path / 'images').mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)).save(
        tmp_path / 'images' / 'a.png')
    (tmp_path / 'ann.json').write_text(json.dumps(RECORDS))
    return tmp_path


def dataset(data_dir, tokenizer, **kwargs):
    cfg = dict(type='LlavaDataset', ann_file=str(data_dir / 'ann.json'),
               image_folder=str(data_dir / 'images'), tokenizer=tokenizer,
               image_processor=dict(type='clip_image_processor',
                                    image_size=32),
               template='vicuna_v1', max_length=10000)
    cfg.update(kwargs)
    return DATASETS.build(cfg)


def text_length(data_dir, tokenizer, idx=0):
    """Tokens of sample ``idx`` with the image as one token (untruncated)."""
    return len(dataset(data_dir, tokenizer)[idx]['input_ids'])


def model(tokenizer, **kwargs):
    torch.manual_seed(0)
    cfg = tiny_vlm_cfg(tokenizer=tokenizer, template='vicuna_v1', **kwargs)
    cfg['llm']['config']['vocab_size'] = len(tokenizer)
    return MODELS.build(cfg)


def test_a_sample_that_fits_as_text_but_not_spliced_is_cut_once(
        data_dir, test_tokenizer):
    """3 positions too long after splicing: the dataset drops the last 3
    tokens; the model's spliced sequence is exactly max_length long and
    supervises exactly the labels the dataset kept."""
    length = text_length(data_dir, test_tokenizer)
    max_length = length - 1 + NUM_FEATURES - 3
    assert length < max_length  # LLaVA's dataset would not truncate it
    full = dataset(data_dir, test_tokenizer)[0]
    cut = dataset(data_dir, test_tokenizer, max_length=max_length,
                  num_image_tokens=NUM_FEATURES)
    item = cut[0]
    assert cut.num_truncated == 1
    assert torch.equal(item['input_ids'], full['input_ids'][:length - 3])
    assert torch.equal(item['labels'], full['labels'][:length - 3])

    vlm = model(test_tokenizer, max_length=max_length,
                num_image_tokens=NUM_FEATURES)
    batch = vlm.data_preprocessor(llava_collate([item]), training=True)
    features = vlm._encode_if_images(batch['inputs'])
    spliced = vlm._splice(batch['inputs'], batch['data_samples'], features,
                          'right')
    assert spliced.inputs_embeds.shape[1] == max_length
    # the labels after splicing, built independently: the image token
    # becomes NUM_FEATURES ignored positions
    expected = []
    for token, label in zip(item['input_ids'].tolist(),
                            item['labels'].tolist()):
        expected += ([IGNORE_INDEX] * NUM_FEATURES
                     if token == IMAGE_TOKEN_INDEX else [label])
    assert spliced.labels[0].tolist() == expected
    assert torch.isfinite(vlm.loss(batch['inputs'],
                                   batch['data_samples'])['loss_lm'])


def test_the_model_never_truncates(data_dir, test_tokenizer):
    """A dataset that counted the image as one token hands the model a
    sequence too long after splicing: an error naming the sample and the
    setting, not a silent cut of its answer."""
    length = text_length(data_dir, test_tokenizer)
    max_length = length + 2
    items = dataset(data_dir, test_tokenizer, max_length=max_length)
    vlm = model(test_tokenizer, max_length=max_length)
    batch = vlm.data_preprocessor(llava_collate([items[0]]), training=True)
    with pytest.raises(ValueError, match=r"sample long is "
                       rf"{length - 1 + NUM_FEATURES} tokens long after "
                       rf"splicing > max_length={max_length}.*"
                       rf"num_image_tokens={NUM_FEATURES}"):
        vlm.loss(batch['inputs'], batch['data_samples'])


def test_the_model_checks_the_image_feature_count(data_dir, test_tokenizer):
    items = dataset(data_dir, test_tokenizer)
    vlm = model(test_tokenizer, num_image_tokens=NUM_FEATURES + 1)
    batch = vlm.data_preprocessor(llava_collate([items[1]]), training=True)
    with pytest.raises(ValueError, match=rf'gives {NUM_FEATURES} features '
                       rf'per image.*num_image_tokens={NUM_FEATURES + 1}'):
        vlm.loss(batch['inputs'], batch['data_samples'])


def test_truncation_that_cuts_every_supervised_token_is_a_named_error(
        data_dir, test_tokenizer):
    full = dataset(data_dir, test_tokenizer)[0]
    first_supervised = int((full['labels'] != IGNORE_INDEX).nonzero()[0])
    # room for everything before the answer, not for its first token
    max_length = first_supervised - 1 + NUM_FEATURES
    data = dataset(data_dir, test_tokenizer, max_length=max_length,
                   num_image_tokens=NUM_FEATURES)
    num_supervised = int((full['labels'] != IGNORE_INDEX).sum())
    with pytest.raises(DataError, match=rf"\[no_supervision\] .*ann.json, "
                       rf"record 0, id 'long'.*cuts all {num_supervised} "
                       'supervised tokens'):
        data[0]
    # one token more keeps the first answer token
    kept = dataset(data_dir, test_tokenizer, max_length=max_length + 1,
                   num_image_tokens=NUM_FEATURES)[0]
    assert int((kept['labels'] != IGNORE_INDEX).sum()) == 1
    # the test split has no labels to lose: its prompt is cut, no error
    assert dataset(data_dir, test_tokenizer, max_length=max_length,
                   num_image_tokens=NUM_FEATURES, test_mode=True)[0]


def test_check_sample_reports_the_supervision_kept(data_dir, test_tokenizer):
    full = dataset(data_dir, test_tokenizer)[0]
    supervised = (full['labels'] != IGNORE_INDEX).nonzero().flatten()
    # cut two supervised tokens
    max_length = len(full['input_ids']) - 1 + NUM_FEATURES - 2
    data = dataset(data_dir, test_tokenizer, max_length=max_length,
                   num_image_tokens=NUM_FEATURES)
    problems = data.check_sample(0).problems
    assert [p.kind for p in problems] == ['over_length']
    assert (f'{len(supervised) - 2} of {len(supervised)} supervised tokens '
            'kept') in problems[0].message
    assert data.check_sample(1).problems == []
