"""FSDP2Strategy on a CPU: the tiny LLaVA through tools/dist_train.sh with
2 processes (gloo) and ``--strategy fsdp`` (activation checkpointing on),
against DDP; ``--resume`` after a crash; the sharded checkpoint, converted
without a process group and resumed in one process.

A 2-process DDP run and a 2-process FSDP2 run go side by side, then a third
resumes the FSDP2 run from iteration 2.  Both start from the same weights
(``load_from`` a plain checkpoint, which also loads a DDP-style checkpoint
into FSDP2): MMEngine's ``Runner`` and ``FlexibleRunner`` build the model
at different points of the random stream.
"""
import os
import os.path as osp
import shutil
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from mmengine.registry import init_default_scope
from torch.distributed.checkpoint.default_planner import \
    _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions, get_model_state_dict, get_optimizer_state_dict)
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict
from torch.distributed.tensor import DTensor

from ports import free_port
from test_tiny_world_training import world_options as tiny_world_options
from dsvlm.engine.checkpoint_files import MANIFEST
from dsvlm.engine.config import load_config
from dsvlm.engine.strategies.fsdp2 import (EXTRA_STATE_FILE, FSDP2Strategy,
                                           fsdp2_checkpoint_to_state_dict)
from dsvlm.models.checkpoint import trainable_names
from dsvlm.registry import MODELS

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = 'configs/tiny/llava_tiny.py'
ITERS, STOP = 4, 2
# fp32 on both sides; what differs is the order of the sums: DDP all-reduces
# whole gradients, FSDP2 reduce-scatters shards (and the clip norm is a sum
# of per-shard norms), so gradients differ by ~1e-7 relative and AdamW
# carries that into the weights: measured 8e-8 at most, in weights that
# moved up to 1.2e-4 in the 2 optimizer steps.
ATOL = 1e-6


def world_options(data_root, init):
    return tiny_world_options(data_root, ITERS) + [
        # gradient accumulation over 2 micro-steps: 2 optimizer steps
        'optim_wrapper.accumulative_counts=2',
        f'default_hooks.checkpoint.interval={STOP}',
        'default_hooks.checkpoint.max_keep_ckpts=2',
        'default_hooks.logger.interval=1', f'load_from={init}']


def _dist_train(work_dir, options, *args):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='', OMP_NUM_THREADS='1',
               PORT=str(free_port()), PYTHON=sys.executable)
    env['PYTHONPATH'] = os.pathsep.join(
        [REPO, osp.join(REPO, 'tests')] +
        [p for p in [env.get('PYTHONPATH')] if p])
    log = f'{work_dir}.log'
    cmd = ['bash', 'tools/dist_train.sh', CONFIG, '2', '--work-dir',
           str(work_dir), *args, '--cfg-options', *options]
    with open(log, 'w') as out:  # the child keeps its own handle
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT), log


def _finish(run, ok=True, timeout=300):
    proc, log = run
    rc = proc.wait(timeout=timeout)
    with open(log) as f:
        text = f.read()
    if (rc == 0) != ok:
        pytest.fail(f'exit code {rc}; log:\n{text[-4000:]}')
    return text


def _build_model(options):
    cfg = load_config(osp.join(REPO, CONFIG), _as_dict(options))
    cfg.model.tokenizer = None
    init_default_scope('dsvlm')
    return MODELS.build(cfg.model)


def _as_dict(options):
    from mmengine.config import DictAction
    return {k: DictAction._parse_iterable(v) for k, v in
            (o.split('=', 1) for o in options)}


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """DDP and FSDP2 side by side, then the resume run (in the background:
    ``test_resume...`` waits for it)."""
    root = tmp_path_factory.mktemp('fsdp2')
    data_root, init = root / 'world', root / 'init.pth'
    options = world_options(data_root, init)
    cfg = load_config(osp.join(REPO, CONFIG), _as_dict(options))
    from dsvlm.datasets.tokenizers import build_tokenizer
    build_tokenizer(cfg.tokenizer)  # the world, once, before the runs
    torch.manual_seed(0)
    model = _build_model(options)
    torch.save(dict(meta=dict(), state_dict=model.state_dict()), init)

    first = [
        _dist_train(root / 'ddp', options),
        _dist_train(root / 'fsdp', options, '--strategy', 'fsdp')]
    logs = dict(ddp=_finish(first[0]), fsdp=_finish(first[1]))
    # What a crash right after iteration 2 leaves (StopAfterIterHook in
    # tests/test_train_tool.py): that iteration's checkpoint, named by
    # `last_checkpoint`.  Copying it from the uninterrupted run saves a
    # third 2-process run; DCP has finished writing when save returns.
    crashed = root / 'crashed'
    shutil.copytree(root / 'fsdp' / f'iter_{STOP}.pth',
                    crashed / f'iter_{STOP}.pth')
    (crashed / 'last_checkpoint').write_text(
        str(crashed / f'iter_{STOP}.pth'))
    resume = _dist_train(crashed, options, '--strategy', 'fsdp', '--resume')
    yield root, model, logs, resume
    if resume[0].poll() is None:
        resume[0].kill()


def test_fsdp2_trains_to_the_weights_of_ddp(runs):
    root, model, logs, _ = runs
    ddp = torch.load(root / 'ddp' / f'iter_{ITERS}.pth', map_location='cpu',
                     weights_only=False)['state_dict']
    fsdp = fsdp2_checkpoint_to_state_dict(str(root / 'fsdp' /
                                              f'iter_{ITERS}.pth'))
    init = model.state_dict()
    assert sorted(fsdp) == sorted(ddp)
    worst = max((fsdp[k] - ddp[k]).abs().max().item() for k in ddp)
    moved = max((ddp[k] - init[k]).abs().max().item() for k in ddp)
    assert worst <= ATOL, worst
    assert moved > 100 * ATOL, moved  # training moved the weights
    assert 'FSDP2: 7 sharding units' in logs['fsdp']  # 4 + 1 + 2 blocks
    # load_from a plain (DDP-style) checkpoint: every rank keeps its shards
    assert f'Loaded {len(init)} tensors from {root / "init.pth"}' in \
        logs['fsdp']
    assert 'accuracy:' in logs['fsdp']  # validation (generate) ran too


def test_checkpoint_is_one_shard_per_rank(runs):
    ckpt = runs[0] / 'fsdp' / f'iter_{STOP}.pth'
    assert ckpt.is_dir()
    # the shards, the training state, and the completion marker written
    # last (dsvlm.engine.checkpoint_files)
    assert sorted(os.listdir(ckpt)) == sorted(
        ['.metadata', '__0_0.distcp', '__1_0.distcp', EXTRA_STATE_FILE,
         MANIFEST])
    # sharded, not gathered: every weight and optimizer state that can be
    # split is saved as two chunks, one from each rank
    metadata = dcp.FileSystemReader(str(ckpt)).read_metadata()
    split = {k: len(v.chunks) for k, v in
             metadata.state_dict_metadata.items()
             if hasattr(v, 'chunks') and len(v.size) and v.size[0] > 1}
    assert any(k.startswith('state_dict.') for k in split)
    assert any(k.startswith('optimizer.') for k in split)
    assert split == {k: 2 for k in split}
    extra = torch.load(ckpt / EXTRA_STATE_FILE, weights_only=False)
    assert extra['meta']['iter'] == STOP and 'message_hub' in extra
    assert 'state_dict' not in extra and 'optimizer' not in extra


def test_converted_checkpoint_is_exactly_the_trainable_weights(runs):
    root, model = runs[:2]
    state = fsdp2_checkpoint_to_state_dict(str(root / 'fsdp' /
                                               f'iter_{STOP}.pth'))
    assert set(state) == trainable_names(model) == set(model.state_dict())
    params = dict(model.named_parameters(remove_duplicate=False))
    for key, value in state.items():
        assert value.device.type == 'cpu' and value.dtype == torch.float32
        assert value.shape == params[key].shape, key


def test_two_process_checkpoint_resumes_in_one_process(runs, tmp_path):
    """DCP reshards: the model and optimizer state that 2 ranks saved load
    into one process (a group of one, made by the strategy)."""
    root = runs[0]
    ckpt = str(root / 'fsdp' / f'iter_{STOP}.pth')
    cfg = load_config(osp.join(REPO, CONFIG), _as_dict(world_options(
        root / 'world', root / 'init.pth')), strategy='fsdp')
    cfg.model.tokenizer = None
    init_default_scope('dsvlm')
    strategy = FSDP2Strategy(
        work_dir=str(tmp_path), activation_checkpointing=True,
        env_kwargs=dict(launcher='none', randomness=dict(seed=0)))
    try:
        model, optim_wrapper, schedulers = strategy.prepare(
            cfg.model, optim_wrapper=cfg.optim_wrapper,
            param_scheduler=cfg.param_scheduler,
            dispatch_kwargs=dict(max_iters=ITERS))
        extra = strategy.resume(ckpt)
        assert extra['meta']['iter'] == STOP
        full = StateDictOptions(full_state_dict=True)
        loaded = get_model_state_dict(model, options=full)
        saved = fsdp2_checkpoint_to_state_dict(ckpt)
        assert sorted(loaded) == sorted(saved)
        for key in saved:
            assert torch.equal(loaded[key], saved[key]), key
        optim = get_optimizer_state_dict(model, optim_wrapper.optimizer,
                                         options=full)
        saved_optim = _saved(ckpt, 'optimizer')
        # parameters that never had a gradient (encoder layer 4, read by
        # nobody) have no state, as in the run that saved
        assert sorted(optim['state']) == sorted(saved_optim['state'])
        assert len(optim['state']) < len(loaded)
        for key, state in saved_optim['state'].items():
            for name in ('exp_avg', 'exp_avg_sq', 'step'):
                assert torch.equal(optim['state'][key][name].cpu(),
                                   state[name]), (key, name)
        assert optim['param_groups'][0]['lr'] == \
            saved_optim['param_groups'][0]['lr']
        saved_extra = torch.load(osp.join(ckpt, EXTRA_STATE_FILE),
                                 weights_only=False)
        assert [s.state_dict() for s in schedulers] == \
            saved_extra['param_schedulers']
    finally:
        dist.destroy_process_group()


def test_bf16_with_a_frozen_encoder_in_one_process(runs, tmp_path):
    """mixed_precision: fp32 sharded master weights and gradients, bf16
    compute; the frozen encoder stays outside FSDP, cast to bf16."""
    from mmengine.runner import Runner
    root = runs[0]
    cfg = load_config(osp.join(REPO, CONFIG), _as_dict(world_options(
        root / 'world', root / 'init.pth') + [
            'model.vision_encoder.train_mode=frozen']), strategy='fsdp')
    cfg.model.tokenizer = None
    init_default_scope('dsvlm')
    strategy = FSDP2Strategy(
        work_dir=str(tmp_path), activation_checkpointing=True,
        mixed_precision=dict(param_dtype='bfloat16', reduce_dtype='float32'),
        env_kwargs=dict(launcher='none', randomness=dict(seed=0)))
    try:
        model, optim_wrapper = strategy.prepare(
            cfg.model, optim_wrapper=cfg.optim_wrapper,
            dispatch_kwargs=dict(max_iters=ITERS))
        batch = next(iter(Runner.build_dataloader(cfg.train_dataloader,
                                                  seed=0)))
        before = {n: p.full_tensor().clone()
                  for n, p in model.named_parameters() if p.requires_grad}
        losses = model.train_step(batch, optim_wrapper)  # no update yet
        assert torch.isfinite(losses['loss'])
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(isinstance(g, DTensor) and
                             g.dtype == torch.float32 for g in grads)
        losses = model.train_step(batch, optim_wrapper)  # accumulated: step
        assert torch.isfinite(losses['loss'])
        for name, param in model.named_parameters():
            if name.startswith('vision_encoder.'):
                assert not param.requires_grad and param.dtype == \
                    torch.bfloat16 and not isinstance(param, DTensor), name
            else:
                assert isinstance(param, DTensor) and param.dtype == \
                    torch.float32, name
        assert any(not torch.equal(before[n], p.full_tensor())
                   for n, p in model.named_parameters() if n in before)
        grad_norm = optim_wrapper.message_hub.get_scalar('train/grad_norm')
        assert isinstance(grad_norm.current(), float)
    finally:
        dist.destroy_process_group()


def test_resume_after_a_crash_ends_with_the_uninterrupted_weights(runs):
    root, _, _, resume = runs
    log = _finish(resume)
    assert 'resumed epoch: 0, iter: 2' in log.lower()
    resumed = fsdp2_checkpoint_to_state_dict(str(root / 'crashed' /
                                                 f'iter_{ITERS}.pth'))
    straight = fsdp2_checkpoint_to_state_dict(str(root / 'fsdp' /
                                                  f'iter_{ITERS}.pth'))
    assert sorted(resumed) == sorted(straight)
    for key in straight:  # the same computation: bit for bit
        assert torch.equal(resumed[key], straight[key]), key


def _saved(path, key):
    """One top-level entry of a DCP directory, read in this process."""
    state = {}
    _load_state_dict(state, storage_reader=dcp.FileSystemReader(path),
                     planner=_EmptyStateDictLoadPlanner(keys={key}),
                     no_dist=True)
    return state[key]
