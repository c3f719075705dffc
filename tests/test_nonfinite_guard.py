"""Non-finite steps are never applied (dsvlm/engine/nonfinite.py,
dsvlm/engine/optim_wrappers.py).

* On a toy linear model: a step whose loss, gradient or both are nan/inf
  is skipped (weights unchanged, gradients zeroed, logged and counted)
  with and without clipping, across a gradient-accumulation window, under
  AMP's loss scaler, and K such steps in a row stop with an error naming
  the work_dir's last checkpoint.  A checkpoint of non-finite weights is
  refused.
* Two gloo processes under DDP: a nan loss on one rank (its gradients
  finite) makes both skip.  DeepSpeed ZeRO-2 in one process: its own
  overflow skip, counted by the same policy.  Both run in forked children
  (no second import of torch and MMEngine).
* End to end: the tiny world with a diverging learning rate stops with the
  error, exits non-zero, and its last checkpoint holds finite weights.
"""
import copy
import math
import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.multiprocessing as mp
from mmengine.logging import MessageHub, MMLogger
from torch import nn

from dsvlm.engine import nonfinite
from dsvlm.engine.nonfinite import (NonFiniteGuard, NonFiniteStepError,
                                    runner_work_dir)
from dsvlm.engine.optim_wrappers import (FiniteStepAmpOptimWrapper,
                                         FiniteStepDeepSpeedOptimWrapper,
                                         FiniteStepOptimWrapper)
from ports import free_port
from test_tiny_world_training import ROOT, world_options

X = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
CLIPS = dict(none=None, norm=dict(max_norm=1.0),
             value=dict(type='value', clip_value=0.5))


@pytest.fixture
def hub(request):
    """A fresh current message hub (the runner's, in a run)."""
    return MessageHub.get_instance(f'nonfinite-{request.node.name}')


@pytest.fixture
def logged(monkeypatch):
    messages = []
    monkeypatch.setattr(nonfinite, 'print_log',
                        lambda msg, **kwargs: messages.append(msg))
    return messages


def toy(seed=0):
    torch.manual_seed(seed)
    return nn.Linear(4, 1)


def weights(model):
    return [p.detach().clone() for p in model.parameters()]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def train_step(wrapper, model, bad=None, forward=None):
    """One ``update_params``; ``bad``: ``'loss'`` (nan loss, nan
    gradients), ``'loss_only'`` (nan loss, finite gradients) or ``'grad'``
    (finite loss, inf gradient)."""
    loss = (forward or model)(X).pow(2).mean()
    if bad == 'loss':
        loss = loss * math.nan
    elif bad == 'loss_only':
        loss = loss + torch.tensor(math.nan)  # no gradient path
    hook = model.weight.register_hook(
        lambda g: torch.full_like(g, math.inf)) if bad == 'grad' else None
    try:
        wrapper.update_params(loss)
    finally:
        if hook is not None:
            hook.remove()


# --- the plain wrapper -------------------------------------------------------
@pytest.mark.parametrize('clip', CLIPS)
@pytest.mark.parametrize('bad, what', [
    ('loss', 'non-finite loss and gradient norm'),
    ('loss_only', 'non-finite loss'), ('grad', 'non-finite gradient norm')])
def test_a_nonfinite_step_is_skipped_and_logged(hub, logged, clip, bad,
                                                what):
    model = toy()
    wrapper = FiniteStepOptimWrapper(
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        clip_grad=copy.deepcopy(CLIPS[clip]),  # MMEngine pops its type
        nonfinite='skip')
    before = weights(model)
    train_step(wrapper, model, bad)
    assert same(weights(model), before)
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
    assert len(logged) == 1 and what in logged[0], logged
    assert bad != 'loss_only' or 'gradient norm' not in logged[0]
    assert logged[0].startswith('Optimizer step 1: ')
    assert 'skipped' in logged[0]
    assert hub.get_info('nonfinite_skips') == 1
    assert hub.get_scalar('train/nonfinite_skips').current() == 1

    train_step(wrapper, model)  # a finite step is applied
    assert not same(weights(model), before)
    assert wrapper.guard.consecutive == 0 and len(logged) == 1
    if clip == 'norm':  # only finite norms are logged
        assert math.isfinite(hub.get_scalar('train/grad_norm').current())


def test_the_iteration_comes_from_the_runner(hub, logged):
    model = toy()
    wrapper = FiniteStepOptimWrapper(
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    hub.update_info('iter', 41)  # RuntimeInfoHook: iterations done
    train_step(wrapper, model, 'grad')
    assert logged[0].startswith('Iteration 42: ')


def test_a_bad_micro_batch_skips_its_whole_accumulation_window(hub, logged):
    model = toy()
    wrapper = FiniteStepOptimWrapper(
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        accumulative_counts=2)
    before = weights(model)
    train_step(wrapper, model, 'loss_only')  # accumulated, no step yet
    train_step(wrapper, model)  # the step: the window had a nan loss
    assert same(weights(model), before) and len(logged) == 1
    train_step(wrapper, model)
    train_step(wrapper, model)
    assert not same(weights(model), before)


def test_k_bad_steps_in_a_row_stop_naming_the_last_checkpoint(tmp_path, hub,
                                                              logged):
    ckpt = tmp_path / 'iter_4.pth'
    ckpt.write_bytes(b'weights')
    (tmp_path / 'last_checkpoint').write_text(str(ckpt))
    model = toy()
    wrapper = FiniteStepOptimWrapper(
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        max_consecutive_nonfinite=3, work_dir=str(tmp_path))
    train_step(wrapper, model, 'loss')
    train_step(wrapper, model)  # a good step resets the count
    good = weights(model)
    train_step(wrapper, model, 'grad')
    train_step(wrapper, model, 'loss')
    with pytest.raises(NonFiniteStepError) as error:
        train_step(wrapper, model, 'loss_only')
    message = str(error.value)
    assert 'on 3 optimizer step(s) in a row' in message
    assert 'max_consecutive_nonfinite=3' in message
    assert f'The last good checkpoint is {ckpt}' in message
    assert same(weights(model), good)
    assert hub.get_info('nonfinite_skips') == 4

    # without a checkpoint the error says so
    empty = tmp_path / 'empty'
    empty.mkdir()
    wrapper = FiniteStepOptimWrapper(
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        max_consecutive_nonfinite=1, work_dir=str(empty))
    with pytest.raises(NonFiniteStepError,
                       match=f'No checkpoint has been saved in {empty}'):
        train_step(wrapper, model, 'loss')


def test_skip_never_stops(hub, logged):
    model = toy()
    wrapper = FiniteStepOptimWrapper(
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        nonfinite='skip', max_consecutive_nonfinite=1)
    for _ in range(8):
        train_step(wrapper, model, 'loss')
    assert hub.get_info('nonfinite_skips') == 8


def test_the_policy_is_checked_when_built(hub):
    model = toy()
    with pytest.raises(ValueError, match="valid values are 'stop', 'skip'"):
        FiniteStepOptimWrapper(
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            nonfinite='ignore')
    with pytest.raises(ValueError, match='max_consecutive_nonfinite'):
        NonFiniteGuard('stop', 0)


def test_a_checkpoint_of_nonfinite_weights_is_refused(hub):
    model = toy()
    wrapper = FiniteStepOptimWrapper(
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    assert 'state' in wrapper.state_dict()
    with torch.no_grad():
        model.bias.fill_(math.inf)
    with pytest.raises(NonFiniteStepError, match='refusing to save'):
        wrapper.state_dict()
    wrapper.check_weights_on_save = False
    assert 'state' in wrapper.state_dict()


def test_the_work_dir_is_the_runners(tmp_path, hub):
    # MMEngine's runners log to <work_dir>/<timestamp>/<timestamp>.log with
    # a logger named like their message hub
    (tmp_path / '20250101_000000').mkdir()
    MMLogger.get_instance(
        hub.instance_name,
        log_file=str(tmp_path / '20250101_000000' / '20250101_000000.log'))
    assert runner_work_dir(hub) == str(tmp_path)
    assert runner_work_dir(MessageHub.get_instance('no-runner')) is None


# --- AMP ---------------------------------------------------------------------
def test_amp_skips_and_lets_the_scaler_back_off(hub, logged, monkeypatch):
    import mmengine.optim.optimizer.amp_optimizer_wrapper as amp
    monkeypatch.setattr(amp, 'is_cuda_available', lambda: True)
    model = toy()
    with warnings.catch_warnings():  # torch.cuda.amp's scaler: no CUDA
        warnings.simplefilter('ignore')
        wrapper = FiniteStepAmpOptimWrapper(
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            clip_grad=dict(max_norm=1.0), max_consecutive_nonfinite=2)
    wrapper.loss_scaler = torch.amp.GradScaler('cpu', init_scale=16.0)
    before = weights(model)

    # a finite loss with an inf gradient: the scaler's overflow, not counted
    train_step(wrapper, model, 'grad')
    assert same(weights(model), before)
    assert wrapper.loss_scaler.get_scale() == 8.0
    assert hub.get_info('nonfinite_skips') is None
    assert 'loss-scale overflow' in logged[0]

    train_step(wrapper, model, 'loss')  # counted
    assert same(weights(model), before)
    assert hub.get_info('nonfinite_skips') == 1
    assert wrapper.loss_scaler.get_scale() == 4.0

    train_step(wrapper, model)  # applied, with unscaled gradients
    reference = toy()
    reference(X).pow(2).mean().backward()
    nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
    for param, ref in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(param, ref - 0.1 * ref.grad)


# --- two ranks under DDP -----------------------------------------------------
def _ddp_rank(rank, port, out):
    import torch.distributed as torch_dist
    from torch.nn.parallel import DistributedDataParallel
    torch.set_num_threads(1)
    torch_dist.init_process_group('gloo', f'tcp://127.0.0.1:{port}',
                                  rank=rank, world_size=2)
    MessageHub.get_instance(f'ddp-rank{rank}')
    model = toy()
    ddp = DistributedDataParallel(model)
    wrapper = FiniteStepOptimWrapper(
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        clip_grad=dict(max_norm=1.0))
    history = [weights(model)]
    for step in range(3):
        loss = ddp(X[rank::2]).pow(2).mean()
        if step == 1 and rank == 1:
            loss = loss + torch.tensor(math.nan)  # gradients stay finite
        wrapper.update_params(loss)
        history.append(weights(model))
    torch.save(history, os.path.join(out, f'rank{rank}.pth'))
    torch_dist.barrier()
    # no teardown: destroying DDP's reducer and gloo's process group after
    # the run sometimes hangs joining gloo's threads (as the tools'
    # exit_distributed_process avoids at exit)
    os._exit(0)


def test_one_rank_nonfinite_makes_every_rank_skip(tmp_path, logged):
    mp.start_processes(_ddp_rank, args=(free_port(), str(tmp_path)),
                       nprocs=2, start_method='fork')
    ranks = [torch.load(tmp_path / f'rank{r}.pth') for r in (0, 1)]
    for history in ranks:
        assert not same(history[1], history[0])  # step 1 applied
        assert same(history[2], history[1])  # step 2 skipped on both
        assert not same(history[3], history[2])  # step 3 applied
    for a, b in zip(*ranks):
        assert same(a, b)


# --- DeepSpeed ---------------------------------------------------------------
def _deepspeed_process(rank, port, out):
    import deepspeed
    import torch.distributed as torch_dist
    torch.set_num_threads(1)
    os.environ.update(RANK='0', LOCAL_RANK='0', WORLD_SIZE='1',
                      MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch_dist.init_process_group('gloo', f'tcp://127.0.0.1:{port}',
                                  rank=0, world_size=1)
    MessageHub.get_instance('deepspeed')
    model = toy()
    engine, optimizer, *_ = deepspeed.initialize(
        model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=0.1),
        config=dict(train_micro_batch_size_per_gpu=8,
                    gradient_accumulation_steps=1, gradient_clipping=0.0,
                    zero_optimization=dict(stage=2)))
    wrapper = FiniteStepDeepSpeedOptimWrapper(
        optimizer, max_consecutive_nonfinite=2, work_dir=out)
    wrapper.model = engine
    history, error = [weights(engine.module)], None
    for bad in (None, 'loss_only', None, 'loss', 'loss'):
        try:
            train_step(wrapper, engine.module, bad, forward=engine)
        except NonFiniteStepError as e:
            error = str(e)
            break
        history.append(weights(engine.module))
    torch.save(dict(history=history, error=error,
                    skips=MessageHub.get_current_instance().get_info(
                        'nonfinite_skips')), os.path.join(out, 'ds.pth'))


def test_deepspeed_skips_and_stops_by_the_same_policy(tmp_path):
    pytest.importorskip('deepspeed')
    mp.start_processes(_deepspeed_process,
                       args=(free_port(), str(tmp_path)), nprocs=1,
                       start_method='fork')
    result = torch.load(tmp_path / 'ds.pth')
    history = result['history']
    assert len(history) == 5  # the 2nd bad step in a row stopped the run
    assert not same(history[1], history[0])
    assert same(history[2], history[1])  # a nan loss, finite gradients
    assert not same(history[3], history[2])
    assert same(history[4], history[3])
    assert 'on 2 optimizer step(s) in a row' in result['error']
    assert 'No checkpoint has been saved' in result['error']
    assert result['skips'] == 3


# --- end to end --------------------------------------------------------------
def test_a_diverging_tiny_run_stops_before_saving_nan(tmp_path):
    work_dir = tmp_path / 'run'
    # iteration 1 diverges (finite loss and gradient, weights ~1e4), 2 and 3
    # have nan gradients: 3 stops, after the checkpoint of 2
    options = [o for o in world_options(tmp_path / 'world', 6)
               if not o.startswith('default_hooks.checkpoint.interval')]
    options += ['default_hooks.checkpoint.interval=1',
                'optim_wrapper.optimizer.lr=1e6',
                'optim_wrapper.max_consecutive_nonfinite=2']
    result = subprocess.run(
        [sys.executable, 'tools/train.py', 'configs/tiny/llava_tiny.py',
         '--work-dir', str(work_dir), '--cfg-options', *options],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert 'NonFiniteStepError' in output, output[-3000:]
    assert 'optimizer step skipped, gradients zeroed' in output
    last = (work_dir / 'last_checkpoint').read_text().strip()
    assert last.endswith('iter_2.pth')
    assert f'The last good checkpoint is {last}' in output
    state = torch.load(last, map_location='cpu',
                       weights_only=False)['state_dict']
    assert state and all(torch.isfinite(v).all() for v in state.values()
                         if v.is_floating_point())
