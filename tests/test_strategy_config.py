"""Strategy presets, ``--strategy`` and the settings stated once
(dsvlm.engine.strategy_config), and the trainable-only optimizer."""
import glob
import os.path as osp

import pytest
from mmengine.config import Config
from torch import nn

from dsvlm.engine.config import load_config
from dsvlm.engine.optim_constructor import TrainableOptimWrapperConstructor
from dsvlm.engine.strategy_config import strategy_kind, strategy_names

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PRESETS = ['ddp', 'deepspeed_zero2', 'deepspeed_zero3',
           'deepspeed_zero3_offload', 'fsdp']
RECIPES = sorted(glob.glob(osp.join(ROOT, 'configs/llava/*.py')) +
                 glob.glob(osp.join(ROOT, 'configs/dsvlm/*.py')) +
                 glob.glob(osp.join(ROOT, 'configs/dsvlm/ablations/*.py')))


def _load(config, strategy=None, world_size=1, monkeypatch=None, **options):
    if monkeypatch is not None:
        monkeypatch.setenv('WORLD_SIZE', str(world_size))
    return load_config(osp.join(ROOT, config), options or None,
                       launcher='pytorch', strategy=strategy)


def test_the_presets_are_the_documented_five():
    assert strategy_names() == sorted(PRESETS)


def test_unknown_strategy_lists_the_valid_names():
    with pytest.raises(ValueError) as err:
        _load('configs/tiny/llava_tiny.py', strategy='zero9')
    for name in PRESETS:
        assert name in str(err.value)


@pytest.mark.parametrize('config', RECIPES,
                         ids=lambda p: osp.relpath(p, ROOT))
def test_every_recipe_defaults_to_llavas_strategy(config):
    cfg = Config.fromfile(config)
    stage = cfg.strategy.zero_optimization.stage
    # LLaVA: ZeRO-2 for stage 1, ZeRO-3 for stage 2 (full and LoRA)
    assert stage == (2 if config.endswith('_pretrain.py') else 3)
    assert cfg.runner_type == 'FlexibleRunner'
    assert cfg.strategy.type == 'DeepSpeedZeroStrategy'


@pytest.mark.parametrize('world_size, steps', [(1, 8), (8, 1), (2, 4)])
def test_deepspeed_gets_what_the_config_states(monkeypatch, world_size,
                                               steps):
    cfg = _load('configs/llava/clip_vicuna7b.py', world_size=world_size,
                monkeypatch=monkeypatch)
    strategy, optim = cfg.strategy, cfg.optim_wrapper
    batch = cfg.train_dataloader.batch_size
    assert strategy.train_micro_batch_size_per_gpu == batch == 16
    # the global batch (128) whatever the number of processes
    assert strategy.gradient_accumulation_steps == steps
    assert batch * steps * world_size == cfg.global_batch_size == 128
    assert strategy.gradient_clipping == 1.0  # optim_wrapper.clip_grad
    assert strategy.bf16 == dict(enabled=True)  # AmpOptimWrapper bfloat16
    assert optim.type == 'FiniteStepDeepSpeedOptimWrapper'  # keeps the guard
    assert optim.constructor == 'TrainableOptimWrapperConstructor'
    for moved in ('clip_grad', 'dtype', 'accumulative_counts'):
        assert moved not in optim
    assert optim.optimizer.lr == 2e-5


def test_two_nodes_keep_the_global_batch(monkeypatch):
    # 2 nodes x 8 GPUs x 32 per GPU would be 512 > 256: lower the per-GPU
    # batch, the global batch stays
    with pytest.raises(ValueError, match='not a multiple'):
        _load('configs/llava/clip_vicuna7b_pretrain.py', world_size=16,
              monkeypatch=monkeypatch)
    cfg = _load('configs/llava/clip_vicuna7b_pretrain.py', world_size=16,
                monkeypatch=monkeypatch, **{'train_dataloader.batch_size': 8})
    assert cfg.strategy.zero_optimization.stage == 2
    assert cfg.strategy.train_micro_batch_size_per_gpu == 8
    assert cfg.strategy.gradient_accumulation_steps == 2  # 8 x 16 x 2 = 256


def test_a_value_the_strategy_states_wins(monkeypatch):
    cfg = _load('configs/llava/clip_vicuna7b.py', monkeypatch=monkeypatch,
                **{'strategy.gradient_clipping': 0.5})
    assert cfg.strategy.gradient_clipping == 0.5


def test_deepspeed_refuses_a_clip_it_cannot_do(monkeypatch):
    with pytest.raises(ValueError, match='global L2 norm'):
        _load('configs/llava/clip_vicuna7b.py', monkeypatch=monkeypatch,
              **{'optim_wrapper.clip_grad.norm_type': 1})


def test_fsdp_gets_bf16_from_the_amp_wrapper(monkeypatch):
    cfg = _load('configs/llava/clip_vicuna7b.py', strategy='fsdp',
                world_size=8, monkeypatch=monkeypatch)
    assert strategy_kind(cfg) == 'fsdp2'
    assert cfg.runner_type == 'FlexibleRunner'
    assert cfg.strategy.type == 'FSDP2Strategy'
    assert cfg.strategy.mixed_precision == dict(param_dtype='bfloat16',
                                                reduce_dtype='float32')
    # the whole DeepSpeed strategy of the config is gone, not merged
    assert 'zero_optimization' not in cfg.strategy
    optim = cfg.optim_wrapper
    assert optim.type == 'FiniteStepOptimWrapper' and 'dtype' not in optim
    assert optim.clip_grad == dict(max_norm=1.0)
    assert optim.accumulative_counts == 1  # 128 = 16 x 8 processes


def test_ddp_preset_is_the_plain_runner(monkeypatch):
    cfg = _load('configs/llava/clip_vicuna7b.py', strategy='ddp',
                world_size=2, monkeypatch=monkeypatch)
    assert cfg.runner_type == 'Runner' and cfg.strategy is None
    assert cfg.optim_wrapper.type == 'FiniteStepAmpOptimWrapper'
    assert cfg.optim_wrapper.accumulative_counts == 4


def test_offload_preset_extends_zero3(monkeypatch):
    cfg = _load('configs/dsvlm/clip_vicuna7b.py',
                strategy='deepspeed_zero3_offload', monkeypatch=monkeypatch)
    zero = cfg.strategy.zero_optimization
    assert zero.stage == 3
    assert zero.offload_optimizer.device == zero.offload_param.device == 'cpu'


def test_tiny_configs_under_every_preset(monkeypatch):
    for name in PRESETS:
        cfg = _load('configs/tiny/dsvlm_tiny.py', strategy=name,
                    monkeypatch=monkeypatch)
        kind = strategy_kind(cfg)
        assert kind == dict(ddp='ddp', fsdp='fsdp2').get(name, 'deepspeed')
        if kind == 'deepspeed':  # fp32 OptimWrapper: no bf16 switched on
            assert 'bf16' not in cfg.strategy
            assert cfg.strategy.gradient_clipping == 1.0


def test_a_strategy_needs_the_flexible_runner():
    with pytest.raises(ValueError, match='FlexibleRunner'):
        load_config(osp.join(ROOT, 'configs/tiny/llava_tiny.py'),
                    {'strategy': dict(type='FSDP2Strategy')})


# --- the optimizer sees trainable parameters only --------------------------
class _Model(nn.Module):

    def __init__(self):
        super().__init__()
        self.vision_encoder = nn.Linear(3, 3)
        self.connector = nn.Linear(3, 3)
        self.llm = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
        self.llm[0].requires_grad_(False)
        self.unet = nn.Linear(3, 3).requires_grad_(False)
        self.lm_head = nn.Linear(3, 3, bias=False)
        self.lm_head.weight = self.llm[1].weight  # tied, as in Llama


def _names(model):
    names = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), name)
    return names


def _groups(paramwise_cfg=None):
    model = _Model()
    names = _names(model)
    constructor = TrainableOptimWrapperConstructor(
        dict(optimizer=dict(type='AdamW', lr=1e-3)), paramwise_cfg)
    optimizer = constructor(model).optimizer
    return [(sorted(names[id(p)] for p in g['params']), g['lr'])
            for g in optimizer.param_groups]


def test_frozen_parameters_are_not_in_the_optimizer():
    # ... and a tied weight (LM head = a layer of the LLM) only once
    (names, lr), = _groups()
    assert lr == 1e-3
    assert names == sorted(['vision_encoder.weight', 'vision_encoder.bias',
                            'connector.weight', 'connector.bias',
                            'llm.1.weight', 'llm.1.bias'])


def test_lr_mult_groups_survive_and_equal_settings_merge():
    groups = _groups(dict(custom_keys={'vision_encoder': dict(lr_mult=0.1)}))
    assert len(groups) == 2  # not one group per parameter
    by_lr = {round(lr, 12): names for names, lr in groups}
    assert by_lr[1e-4] == ['vision_encoder.bias', 'vision_encoder.weight']
    assert by_lr[1e-3] == sorted(['connector.weight', 'connector.bias',
                                  'llm.1.weight', 'llm.1.bias'])
