"""tools/train.py, tools/test.py and tools/dist_train.sh on a toy model (CPU).

Reference values come from plain-torch re-computations of the toy problem,
never from the runner.
"""
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config

from ports import free_port
from tool_loader import load_tool
from toy_modules import toy_initial_weights, toy_samples, write_toy_config

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TESTS = osp.join(REPO, 'tests')

RESUME_CONFIG = """
train_cfg = dict(_delete_=True, by_epoch=False, max_iters=12)
train_dataloader = dict(sampler=dict(shuffle=True))
optim_wrapper = dict(optimizer=dict(_delete_=True, type='Adam', lr=0.05))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=4),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=4, end=12)]
default_hooks = dict(checkpoint=dict(interval=3, by_epoch=False))
"""
CRASH_CONFIG = """
custom_hooks = [dict(type='StopAfterIterHook', stop_after=6)]
"""
TEST_CONFIG = """
test_dataloader = dict(
    batch_size=3, num_workers=0, collate_fn=dict(type='default_collate'),
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='ToyRegressionDataset', num_samples=16))
test_evaluator = dict(type='ToyMSEMetric', out_file='{out_file}')
test_cfg = dict(type='TestLoop')
"""


def _env(**extra):
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        [REPO, TESTS] + [p for p in [env.get('PYTHONPATH')] if p])
    env['CUDA_VISIBLE_DEVICES'] = ''  # the CPU code path, also on GPU boxes
    env.update(extra)
    return env


def _start(args, log, **env):
    return subprocess.Popen(args, cwd=REPO, env=_env(**env),
                            stdout=open(log, 'w'), stderr=subprocess.STDOUT)


def _finish(proc, log, expected_rc=0, timeout=180):
    rc = proc.wait(timeout=timeout)
    if rc != expected_rc:
        with open(log) as f:
            tail = f.read()[-4000:]
        pytest.fail(f'exit code {rc} (expected {expected_rc}); log:\n{tail}')


def _train(config, work_dir, *args):
    return [sys.executable, 'tools/train.py', config, '--work-dir',
            str(work_dir), *args]


def _state(work_dir, rank=0):
    return torch.load(osp.join(work_dir, f'state_rank{rank}.pth'))


def _sgd_reference(steps, batch, lr):
    """Plain-torch SGD on the toy problem, full batches in dataset order."""
    x, y = toy_samples(steps * batch)
    w, b = (t.clone() for t in toy_initial_weights())
    for s in range(steps):
        xb, yb = x[s * batch:(s + 1) * batch], y[s * batch:(s + 1) * batch]
        w.requires_grad_(True)
        b.requires_grad_(True)
        loss = ((xb @ w.T + b - yb)**2).mean()
        gw, gb = torch.autograd.grad(loss, [w, b])
        w, b = (w - lr * gw).detach(), (b - lr * gb).detach()
    return w, b


# --- resume ----------------------------------------------------------------
@pytest.fixture(scope='module')
def resume_runs(tmp_path_factory):
    """An uninterrupted 12-iteration run, and one that crashes after
    iteration 6 and is resumed with ``--resume`` (latest checkpoint)."""
    root = tmp_path_factory.mktemp('resume')
    config = write_toy_config(str(root), 'resume.py', RESUME_CONFIG)
    crash = str(root / 'crash.py')
    with open(crash, 'w') as f:
        f.write("_base_ = ['./resume.py']\n" + CRASH_CONFIG)
    full, part = root / 'full', root / 'part'
    procs = [(_start(_train(config, full), root / 'full.log'), 'full.log', 0),
             (_start(_train(crash, part), root / 'crash.log'), 'crash.log', 3)]
    for proc, log, rc in procs:  # the two run side by side
        _finish(proc, root / log, expected_rc=rc)
    assert not osp.exists(part / 'state_rank0.pth')  # it did crash
    assert sorted(p for p in os.listdir(part) if p.endswith('.pth')) == [
        'iter_3.pth', 'iter_6.pth']
    _finish(_start(_train(config, part, '--resume'), root / 'resume.log'),
            root / 'resume.log')
    return root, config, full, part


def test_resume_ends_with_the_weights_of_an_uninterrupted_run(resume_runs):
    root, _, full, part = resume_runs
    uninterrupted, resumed = _state(full), _state(part)
    assert torch.equal(resumed['weight'], uninterrupted['weight'])
    assert torch.equal(resumed['bias'], uninterrupted['bias'])
    # it resumed at iteration 6, with the same data order (shuffled, across
    # an epoch boundary), rather than starting again
    assert len(uninterrupted['seen_indices']) == 24  # 12 iters x batch 2
    assert resumed['seen_indices'] == uninterrupted['seen_indices'][12:]
    # and training did move the weights
    assert not torch.equal(uninterrupted['weight'], toy_initial_weights()[0])
    with open(root / 'resume.log') as f:
        assert 'resumed epoch: 0, iter: 6' in f.read().lower()


def test_test_tool_evaluates_the_checkpoint(resume_runs):
    root, config, full, _ = resume_runs
    out_file = root / 'metrics.pth'
    test_config = str(root / 'test.py')
    with open(test_config, 'w') as f:
        f.write("_base_ = ['./resume.py']\n" +
                TEST_CONFIG.format(out_file=out_file))
    checkpoint = str(full / 'iter_12.pth')
    args = [sys.executable, 'tools/test.py', test_config, checkpoint,
            '--work-dir', str(root / 'test')]
    _finish(_start(args, root / 'test.log'), root / 'test.log')
    metrics = torch.load(out_file)
    state = torch.load(checkpoint, map_location='cpu',
                       weights_only=False)['state_dict']
    x, y = toy_samples(16)
    expected = ((x @ state['linear.weight'].T + state['linear.bias'] - y)
                **2).mean().item()
    assert metrics['count'] == 16
    assert metrics['mse'] == pytest.approx(expected, rel=1e-6)


# --- two processes on a CPU ------------------------------------------------
def test_two_process_cpu_training_synchronises_gradients(tmp_path):
    """torchrun, 2 ranks x batch 2 (gloo), against one process x batch 2 x
    2 accumulation steps, against plain SGD on batches of 4: global batch 4
    in all three, 16 samples, 4 optimizer steps."""
    config = write_toy_config(str(tmp_path))
    dist_log, single_log = tmp_path / 'dist.log', tmp_path / 'single.log'
    dist_run = _start(['bash', 'tools/dist_train.sh', config, '2',
                       '--work-dir', str(tmp_path / 'dist')], dist_log,
                      PORT=str(free_port()), PYTHON=sys.executable)
    single = _start(_train(config, tmp_path / 'single'), single_log)
    _finish(dist_run, dist_log, timeout=120)
    _finish(single, single_log)

    ranks = [_state(tmp_path / 'dist', r) for r in (0, 1)]
    one = _state(tmp_path / 'single')
    assert [s['world_size'] for s in ranks] == [2, 2]
    assert [s['accumulative_counts'] for s in ranks] == [1, 1]
    assert one['accumulative_counts'] == 2
    # the ranks trained on different halves of the data ...
    seen0, seen1 = ranks[0]['seen_indices'], ranks[1]['seen_indices']
    assert len(seen0) == len(seen1) == 8
    assert not set(seen0) & set(seen1)
    assert sorted(seen0 + seen1) == list(range(16))
    # ... and still ended with identical weights: the gradients were
    # all-reduced, giving the update of the union batch
    assert torch.equal(ranks[0]['weight'], ranks[1]['weight'])
    assert torch.equal(ranks[0]['bias'], ranks[1]['bias'])
    w, b = _sgd_reference(steps=4, batch=4, lr=0.01)
    for state in ranks + [one]:
        torch.testing.assert_close(state['weight'], w, rtol=0, atol=1e-6)
        torch.testing.assert_close(state['bias'], b, rtol=0, atol=1e-6)
    # rank 0's data alone would give other weights: the check can fail
    w0, _ = _sgd_reference(steps=4, batch=2, lr=0.01)
    assert (w0 - w).abs().max() > 1e-2


# DeepSpeed from plain tools/train.py (one process, no launcher) and in two
# processes: tests/test_deepspeed_strategy.py.


# --- command line ----------------------------------------------------------
def _merged(tool, argv):
    args = tool.parse_args(argv)
    cfg = Config(dict(optim_wrapper=dict(optimizer=dict(type='SGD'))))
    return tool.merge_args(cfg, args)


def test_train_command_line(monkeypatch):
    monkeypatch.setenv('LOCAL_RANK', '0')  # parse_args may set it
    train = load_tool('train')
    cfg = _merged(train, ['configs/tiny/llava_tiny.py'])
    # the config's path below configs/
    assert cfg.work_dir == osp.join('work_dirs', 'tiny', 'llava_tiny')
    assert cfg.launcher == 'none' and cfg.default_scope == 'dsvlm'
    assert 'resume' not in cfg

    cfg = _merged(train, ['c.py', '--resume'])
    assert cfg.resume is True and cfg.load_from is None  # latest in work_dir
    cfg = _merged(train, ['c.py', '--resume', 'x/iter_6.pth', '--amp',
                          '--work-dir', 'w', '--launcher', 'pytorch'])
    assert cfg.resume is True and cfg.load_from == 'x/iter_6.pth'
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    assert cfg.work_dir == 'w' and cfg.launcher == 'pytorch'

    args = train.parse_args(['c.py', '--cfg-options', 'a.b=1', 'c=[1,2]'])
    assert args.cfg_options == {'a.b': 1, 'c': [1, 2]}


def test_test_command_line(monkeypatch):
    monkeypatch.setenv('LOCAL_RANK', '0')
    test = load_tool('test')
    cfg = _merged(test, ['configs/x/model.py', 'ckpt.pth'])
    assert cfg.load_from == 'ckpt.pth' and cfg.resume is False
    assert cfg.work_dir == osp.join('work_dirs', 'x', 'model')
    cfg = _merged(test, ['/elsewhere/model.py', 'ckpt.pth'])
    assert cfg.work_dir == osp.join('work_dirs', 'model')
