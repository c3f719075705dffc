"""dsvlm.engine.config: shared keys and the global batch size."""
from pathlib import Path

import pytest
from mmengine.config import Config

from dsvlm.engine.config import (complete_config, load_config,
                                 world_size_from_env)

TOKENIZER = dict(type='tiny_tokenizer', data_root='data/tiny')


def _cfg(**extra):
    cfg = dict(
        tokenizer=TOKENIZER,
        template='vicuna_v1',
        max_length=64,
        model=dict(type='LlavaModel', max_length=None, template='plain'),
        train_dataloader=dict(
            batch_size=2,
            dataset=dict(type='ConcatDataset', datasets=[
                dict(type='LlavaDataset', ann_file='a.json'),
                dict(type='RepeatDataset', times=2,
                     dataset=dict(type='LlavaDataset', ann_file='b.json',
                                  template='plain'))])),
        val_dataloader=dict(dataset=dict(type='LlavaDataset',
                                         tokenizer=None)),
        test_dataloader=None,
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3)))
    cfg.update(extra)
    return Config(cfg)


def test_shared_keys_reach_every_dataset_and_the_model():
    cfg = complete_config(_cfg(), world_size=1)
    concat = cfg.train_dataloader.dataset
    a, b = concat.datasets[0], concat.datasets[1].dataset
    val = cfg.val_dataloader.dataset
    for target in (a, b, val, cfg.model):
        assert target.tokenizer == TOKENIZER
        assert target.max_length == 64
    assert a.template == val.template == 'vicuna_v1'
    # values a dataset or the model set themselves are kept
    assert b.template == 'plain' and cfg.model.template == 'plain'
    # wrappers are left alone; absent top-level keys are not invented
    assert 'tokenizer' not in concat and 'tokenizer' not in concat.datasets[1]
    for target in (a, b, val, cfg.model):
        assert 'image_processor' not in target
    # copies, not shared objects
    a.tokenizer['data_root'] = 'elsewhere'
    assert b.tokenizer['data_root'] == 'data/tiny'


@pytest.mark.parametrize('global_batch, world_size, expected', [
    (8, 1, 4), (8, 2, 2), (8, 4, 1), (2, 1, 1)])
def test_accumulation_keeps_the_global_batch(global_batch, world_size,
                                             expected):
    cfg = complete_config(_cfg(global_batch_size=global_batch),
                          world_size=world_size)
    assert cfg.optim_wrapper.accumulative_counts == expected
    assert expected * 2 * world_size == global_batch


def test_indivisible_global_batch_names_the_keys():
    with pytest.raises(ValueError) as error:
        complete_config(_cfg(global_batch_size=6), world_size=2)
    message = str(error.value)
    assert 'global_batch_size=6' in message
    assert 'train_dataloader.batch_size=2' in message
    assert '2 process' in message


def test_deepspeed_gets_gradient_accumulation_steps():
    cfg = _cfg(global_batch_size=16, runner_type='FlexibleRunner',
               strategy=dict(type='DeepSpeedStrategy'),
               optim_wrapper=dict(type='DeepSpeedOptimWrapper',
                                  optimizer=dict(type='AdamW', lr=1e-3)))
    complete_config(cfg, world_size=2)
    assert cfg.strategy.gradient_accumulation_steps == 4
    assert 'accumulative_counts' not in cfg.optim_wrapper


def test_no_global_batch_size_changes_nothing():
    cfg = complete_config(_cfg(), world_size=4)
    assert 'accumulative_counts' not in cfg.optim_wrapper


def test_world_size_from_the_launcher(monkeypatch):
    monkeypatch.setenv('WORLD_SIZE', '4')
    monkeypatch.setenv('SLURM_NTASKS', '8')
    assert world_size_from_env('none') == 1
    assert world_size_from_env('pytorch') == 4
    assert world_size_from_env('slurm') == 8
    assert world_size_from_env() == 4
    monkeypatch.delenv('WORLD_SIZE')
    assert world_size_from_env() == 1


def test_load_config_inherits_overrides_and_completes(tmp_path, monkeypatch):
    monkeypatch.setenv('WORLD_SIZE', '2')
    (tmp_path / 'base.py').write_text(
        "max_length = 32\n"
        "global_batch_size = 8\n"
        "model = dict(type='LlavaModel')\n"
        "train_dataloader = dict(batch_size=1, dataset=dict(type='D'))\n"
        "optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.1))\n")
    (tmp_path / 'child.py').write_text(
        "_base_ = ['./base.py']\nmax_length = 48\n")
    cfg = load_config(str(tmp_path / 'child.py'),
                      {'train_dataloader.batch_size': 2},
                      launcher='pytorch')
    assert cfg.train_dataloader.dataset.max_length == 48
    assert cfg.model.max_length == 48
    assert cfg.optim_wrapper.accumulative_counts == 2  # 8 // (2 * 2)


def test_batch_grouping_samplers_get_the_dataloader_batch_size():
    cfg = _cfg()
    cfg.train_dataloader.sampler = dict(type='LengthGroupedSampler',
                                        mega_batch_mult=4)
    cfg.val_dataloader.batch_size = 8
    cfg.val_dataloader.sampler = dict(type='DefaultSampler', shuffle=False)
    complete_config(cfg, world_size=1)
    assert cfg.train_dataloader.sampler.batch_size == 2
    # MMEngine's DefaultSampler takes no batch size and gets none
    assert 'batch_size' not in cfg.val_dataloader.sampler


def test_a_sampler_batch_size_other_than_the_dataloaders_is_an_error():
    cfg = _cfg()
    cfg.train_dataloader.sampler = dict(type='LengthGroupedSampler',
                                        batch_size=16)
    with pytest.raises(ValueError, match=r'train_dataloader.sampler.batch_'
                       r'size=16 differs from train_dataloader.batch_size=2'):
        complete_config(cfg, world_size=1)


def test_the_tiny_config_states_its_batch_size_once():
    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / 'configs/tiny/llava_tiny.py',
                      {'train_dataloader.batch_size': 5})
    assert cfg.train_dataloader.sampler.batch_size == 5
