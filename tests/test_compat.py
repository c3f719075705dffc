"""Each MMEngine patch in dsvlm.engine.compat: it fails without, works with."""
import importlib.util

import pytest
import torch
import torch.distributed as dist
from mmengine.dist import utils as dist_utils
from mmengine.model.wrappers import MMDistributedDataParallel
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import DefaultScope
from mmengine.runner import FlexibleRunner
from torch import nn

from ports import free_port
from dsvlm.engine import compat

compat.apply_mmengine_patches()

needs_cpu_only = pytest.mark.skipif(
    torch.cuda.is_available(), reason='checks the CPU-only code path')


@pytest.fixture
def torchrun_env(monkeypatch):
    """The environment torchrun gives a single process."""
    for key, value in dict(RANK='0', LOCAL_RANK='0', WORLD_SIZE='1',
                           MASTER_ADDR='127.0.0.1',
                           MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(key, value)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_apply_is_idempotent():
    before = (dist_utils._init_dist_pytorch,
              MMDistributedDataParallel.__init__,
              FlexibleRunner.from_cfg.__func__,
              MMENGINE_MODELS.build_func)
    compat.apply_mmengine_patches()
    compat._applied = False  # force a second pass through every patch
    compat.apply_mmengine_patches()
    after = (dist_utils._init_dist_pytorch,
             MMDistributedDataParallel.__init__,
             FlexibleRunner.from_cfg.__func__,
             MMENGINE_MODELS.build_func)
    assert before == after
    assert all(compat.is_patched(f) for f in after[:3])
    # not wrapped twice: one level down is MMEngine's own function
    assert not compat.is_patched(after[0].__wrapped__)


@needs_cpu_only
def test_pytorch_launcher_starts_gloo_without_cuda(torchrun_env):
    upstream = dist_utils._init_dist_pytorch.__wrapped__
    with pytest.raises((AttributeError, RuntimeError, AssertionError),
                       match='(?i)cuda|nvidia'):
        upstream('gloo')  # torch.cuda.set_device fails on CPU
    assert not dist.is_initialized()

    dist_utils._init_dist_pytorch('nccl')  # what configs ask for
    assert dist.is_initialized()
    assert dist.get_backend() == 'gloo'
    assert torch.cuda.set_device is not None  # restored, not left a no-op
    assert torch.cuda.set_device.__module__ == 'torch.cuda'


@needs_cpu_only
def test_ddp_wraps_a_cpu_model_and_syncs(torchrun_env):
    dist_utils._init_dist_pytorch('gloo')
    upstream = MMDistributedDataParallel.__init__.__wrapped__
    bare = MMDistributedDataParallel.__new__(MMDistributedDataParallel)
    with pytest.raises(ValueError, match='device_ids'):
        upstream(bare, module=nn.Linear(2, 1), device_ids=[0])

    model = MMDistributedDataParallel(module=nn.Linear(2, 1), device_ids=[0])
    assert model.device_ids is None
    x = torch.ones(3, 2)
    model(x).sum().backward()  # the gradient all-reduce runs on gloo
    assert torch.equal(model.module.weight.grad, torch.full((1, 2), 3.))


@needs_cpu_only
def test_finish_distributed_destroys_the_group(torchrun_env):
    dist_utils._init_dist_pytorch('gloo')
    compat.finish_distributed()
    assert not dist.is_initialized()
    compat.finish_distributed()  # no group: nothing to do


@pytest.mark.skipif(importlib.util.find_spec('deepspeed') is None,
                    reason='deepspeed not installed')
def test_deepspeed_strategy_builds(tmp_path):
    from mmengine._strategy import DeepSpeedStrategy
    from mmengine._strategy import deepspeed as ds_strategy
    from mmengine.registry import OPTIMIZERS
    upstream = ds_strategy.register_deepspeed_optimizers.__wrapped__
    if importlib.util.find_spec('deepspeed.runtime.fp16.onebit') is None:
        with pytest.raises(ModuleNotFoundError, match='onebit'):
            upstream()

    for _ in range(2):  # a second strategy must not re-register
        strategy = DeepSpeedStrategy(work_dir=str(tmp_path))
        assert strategy.config['gradient_accumulation_steps'] == 1
    for name in ('DeepSpeedCPUAdam', 'FusedAdam', 'FusedLamb'):
        assert OPTIMIZERS.get(name) is not None


def _flexible_cfg(tmp_path, **extra):
    cfg = dict(model=dict(type='ToyLinearModel'), work_dir=str(tmp_path),
               launcher='none', default_scope='dsvlm')
    cfg.update(extra)
    return cfg


def test_flexible_runner_from_cfg_without_env_cfg(tmp_path):
    import toy_modules  # noqa: F401  (registers ToyLinearModel)
    upstream = FlexibleRunner.from_cfg.__func__.__wrapped__
    with pytest.raises(TypeError, match='mapping'):
        upstream(FlexibleRunner, _flexible_cfg(tmp_path / 'a'))

    runner = FlexibleRunner.from_cfg(_flexible_cfg(tmp_path / 'b'))
    assert type(runner.strategy).__name__ == 'SingleDeviceStrategy'


def test_flexible_runner_finds_a_dsvlm_strategy(tmp_path):
    import toy_modules  # noqa: F401  (registers ToyStrategy in dsvlm)
    upstream = FlexibleRunner.from_cfg.__func__.__wrapped__
    cfg = _flexible_cfg(tmp_path / 'a', strategy=dict(type='ToyStrategy'),
                        env_cfg=dict(dist_cfg=dict(backend='gloo')))
    # a fresh tools process has no dsvlm default scope yet
    with DefaultScope.overwrite_default_scope('mmengine'):
        with pytest.raises(KeyError, match='ToyStrategy'):
            upstream(FlexibleRunner, cfg)
        runner = FlexibleRunner.from_cfg(dict(cfg, work_dir=str(tmp_path)))
    assert type(runner.strategy).__name__ == 'ToyStrategy'


def test_runner_path_lists_registered_names():
    import toy_modules  # noqa: F401
    upstream_build = MMENGINE_MODELS.build_func.__wrapped__
    with DefaultScope.overwrite_default_scope('dsvlm'):
        with pytest.raises(KeyError) as upstream_error:
            upstream_build(dict(type='NoSuchModel'), MMENGINE_MODELS)
        assert 'ToyLinearModel' not in str(upstream_error.value)

        with pytest.raises(KeyError) as error:
            MMENGINE_MODELS.build(dict(type='NoSuchModel'))
        built = MMENGINE_MODELS.build(dict(type='ToyLinearModel'))
    message = str(error.value)
    assert 'dsvlm::model' in message
    assert 'ToyLinearModel' in message  # a dsvlm name
    assert 'BaseDataPreprocessor' in message  # a name of the parent
    assert type(built).__name__ == 'ToyLinearModel'


@pytest.mark.parametrize('num_workers', [0, 1])
def test_epoch_restarts_sleep_only_with_worker_processes(monkeypatch,
                                                          num_workers):
    import time

    from mmengine.runner import loops
    from torch.utils.data import DataLoader
    sleeps = []
    monkeypatch.setattr(time, 'sleep', sleeps.append)
    loader = DataLoader(list(range(3)), batch_size=2, num_workers=num_workers)
    patched = loops._InfiniteDataloaderIterator.__next__
    assert compat.is_patched(patched)
    for next_batch, expected in ((patched.__wrapped__, [2, 2]),
                                 (patched, [2, 2] if num_workers else [])):
        sleeps.clear()
        iterator = loops._InfiniteDataloaderIterator(loader)
        batches = [next_batch(iterator).tolist() for _ in range(6)]
        # three epochs of two batches, in order, with or without the sleep
        assert batches == [[0, 1], [2]] * 3
        assert sleeps == expected
    assert loops.time is time  # the module is restored after each call
