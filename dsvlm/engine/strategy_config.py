"""Distributed strategies in configs: presets, and settings stated once.

A preset is a file in ``configs/_base_/strategies/`` that sets
``runner_type`` and ``strategy``.  A recipe inherits its default one as a
base; ``tools/train.py --strategy NAME`` replaces it (:func:`apply_strategy`).

The engines want values the config already states elsewhere.
:func:`fill_strategy_settings` copies them over, so each is stated once:

============================  ===========================================
the config states             DeepSpeed                       FSDP2
============================  ===========================================
train_dataloader.batch_size   train_micro_batch_size_per_gpu  (dataloader)
optim_wrapper.clip_grad       gradient_clipping               (optim wrapper)
AmpOptimWrapper dtype         bf16 / fp16 enabled             mixed_precision
optim_wrapper type            DeepSpeedOptimWrapper           OptimWrapper
============================  ===========================================

A ``FiniteStep*`` wrapper (``dsvlm.engine.optim_wrappers``) becomes the
``FiniteStep*`` twin of the engine's, keeping its non-finite policy.

Gradient accumulation from ``global_batch_size`` is set by
``dsvlm.engine.config.set_gradient_accumulation`` for every strategy.  Both
sharded strategies build the optimizer with
``TrainableOptimWrapperConstructor`` (trainable parameters only, merged
parameter groups) unless the config names another constructor.
"""
import logging
import os
import os.path as osp
from typing import List

from mmengine.config import Config
from mmengine.logging import print_log

PRESETS_DIR = osp.join(osp.dirname(osp.dirname(osp.dirname(
    osp.abspath(__file__)))), 'configs', '_base_', 'strategies')

DEEPSPEED_STRATEGIES = ('DeepSpeedStrategy', 'DeepSpeedZeroStrategy')
FSDP_STRATEGIES = ('FSDP2Strategy', )
# MMEngine's wrappers and dsvlm's twins that never apply a non-finite step
FINITE_STEP_WRAPPERS = {
    'OptimWrapper': 'FiniteStepOptimWrapper',
    'AmpOptimWrapper': 'FiniteStepAmpOptimWrapper',
    'DeepSpeedOptimWrapper': 'FiniteStepDeepSpeedOptimWrapper',
}
PLAIN_OPTIM_WRAPPERS = ('OptimWrapper', 'AmpOptimWrapper',
                        'FiniteStepOptimWrapper', 'FiniteStepAmpOptimWrapper')
TRAINABLE_CONSTRUCTOR = 'TrainableOptimWrapperConstructor'


def mmengine_wrapper_type(wrapper_type: str) -> str:
    """The MMEngine optim wrapper type that ``wrapper_type`` is or
    extends (``'AmpOptimWrapper'`` for ``'FiniteStepAmpOptimWrapper'``)."""
    for base, guarded in FINITE_STEP_WRAPPERS.items():
        if wrapper_type == guarded:
            return base
    return wrapper_type


def same_guard(wrapper_type: str, target: str) -> str:
    """``target`` (an MMEngine wrapper type), as its ``FiniteStep*`` twin
    when ``wrapper_type`` is one."""
    if wrapper_type in FINITE_STEP_WRAPPERS.values():
        return FINITE_STEP_WRAPPERS[target]
    return target


def strategy_names() -> List[str]:
    """The preset names ``--strategy`` accepts."""
    return sorted(osp.splitext(f)[0] for f in _preset_files())


def _preset_files():
    return [f for f in os.listdir(PRESETS_DIR)
            if f.endswith('.py') and not f.startswith('_')]


def load_strategy_preset(name: str) -> Config:
    if name not in strategy_names():
        raise ValueError(f'--strategy {name!r} is not a preset; valid '
                         f'names: {", ".join(strategy_names())} '
                         f'(files in {PRESETS_DIR})')
    return Config.fromfile(osp.join(PRESETS_DIR, f'{name}.py'))


def apply_strategy(cfg, name: str):
    """Replace the config's ``runner_type`` and ``strategy`` by those of the
    preset ``name`` (whole: no key of the old strategy survives)."""
    preset = load_strategy_preset(name)
    cfg['runner_type'] = preset.get('runner_type', 'Runner')
    strategy = preset.get('strategy')
    cfg['strategy'] = strategy.to_dict() if strategy is not None else None
    cfg['strategy_name'] = name
    return cfg


def strategy_kind(cfg) -> str:
    """``'deepspeed'``, ``'fsdp2'``, ``'ddp'`` (no strategy, or the plain
    Runner) or ``'other'``."""
    strategy = cfg.get('strategy')
    if not strategy:
        return 'ddp'
    name = str(strategy.get('type', '')).split('.')[-1]
    if name in DEEPSPEED_STRATEGIES:
        return 'deepspeed'
    if name in FSDP_STRATEGIES:
        return 'fsdp2'
    return 'other'


def fill_strategy_settings(cfg):
    """Fill the strategy's settings from the rest of the config (in place;
    see the module docstring).  A value the strategy states itself wins."""
    kind = strategy_kind(cfg)
    if kind != 'ddp' and cfg.get('runner_type', 'Runner') == 'Runner':
        raise ValueError(
            f'strategy={dict(cfg["strategy"])} needs '
            "runner_type='FlexibleRunner' (MMEngine's Runner ignores "
            'strategies); the presets in configs/_base_/strategies/ set '
            'both')
    if kind == 'deepspeed':
        _fill_deepspeed(cfg)
    elif kind == 'fsdp2':
        _fill_fsdp2(cfg)
    return cfg


def _optim_wrapper(cfg):
    optim = cfg.get('optim_wrapper')
    if optim is None:
        return None
    wrapper_type = optim.get('type', 'OptimWrapper')
    if wrapper_type not in PLAIN_OPTIM_WRAPPERS:
        return None  # already the engine's own (e.g. DeepSpeedOptimWrapper)
    optim.setdefault('constructor', TRAINABLE_CONSTRUCTOR)
    return optim


def _amp_dtype(optim):
    """The autocast dtype of an AmpOptimWrapper config, or None."""
    if mmengine_wrapper_type(optim.get('type', 'OptimWrapper')) != \
            'AmpOptimWrapper':
        return None
    return optim.get('dtype') or 'float16'  # MMEngine's default on CUDA


def _fill_deepspeed(cfg):
    strategy = cfg['strategy']
    batch = (cfg.get('train_dataloader') or {}).get('batch_size')
    if batch is not None:
        strategy.setdefault('train_micro_batch_size_per_gpu', batch)
    optim = _optim_wrapper(cfg)
    if optim is None:
        return
    clip = optim.pop('clip_grad', None)
    if clip and clip.pop('per_part', False):
        print_log('optim_wrapper.clip_grad.per_part: DeepSpeed clips one '
                  'global norm (gradient_clipping); the parts are clipped '
                  'together under this strategy', logger='current',
                  level=logging.WARNING)
    if clip:
        if set(clip) - {'max_norm', 'norm_type'} or clip.get(
                'norm_type', 2) != 2:
            raise ValueError(
                f'optim_wrapper.clip_grad={dict(clip)}: DeepSpeed clips the '
                'global L2 norm only (gradient_clipping=max_norm)')
        strategy.setdefault('gradient_clipping', clip['max_norm'])
    dtype = _amp_dtype(optim)
    if dtype in ('bfloat16', 'bf16'):
        strategy.setdefault('bf16', dict(enabled=True))
    elif dtype in ('float16', 'fp16', 'half'):
        strategy.setdefault('fp16', dict(enabled=True, loss_scale=0))
    elif dtype is not None:
        raise ValueError(f'optim_wrapper.dtype={dtype!r}: DeepSpeed trains '
                         "in 'bfloat16' or 'float16'")
    for key in ('dtype', 'loss_scale', 'accumulative_counts',
                'check_weights_on_save'):
        optim.pop(key, None)
    optim['type'] = same_guard(optim.get('type', 'OptimWrapper'),
                               'DeepSpeedOptimWrapper')


def _fill_fsdp2(cfg):
    strategy = cfg['strategy']
    optim = _optim_wrapper(cfg)
    if optim is None:
        return
    dtype = _amp_dtype(optim)
    if dtype is not None and strategy.get('mixed_precision') is None:
        strategy['mixed_precision'] = dict(param_dtype=dtype,
                                           reduce_dtype='float32')
    for key in ('dtype', 'loss_scale'):
        optim.pop(key, None)
    # FSDP2 casts; no autocast on top
    optim['type'] = same_guard(optim.get('type', 'OptimWrapper'),
                               'OptimWrapper')
