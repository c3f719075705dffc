"""Crash-safe checkpoints (SafeCheckpointHook, dsvlm/engine/checkpoint_files)
and ``--resume auto``.

* Unit tests: a full disk during a save, a misspelt hook argument, the
  newest complete checkpoint among broken ones.
* Fault injection: a tiny LLaVA run saving every iteration with
  ``max_keep_ckpts=1`` is SIGKILLed inside each window of a save (the
  temporary half written, written, renamed, ``last_checkpoint`` moved: the
  run pauses there, see checkpoint_faults.py) and at seeded random moments,
  resumed with ``--resume`` each time, and ends with the weights of an
  uninterrupted run (``torch.equal``); the plain runner and DeepSpeed
  ZeRO-2 (one process).  Runs are forks of one process that imported
  everything once (fork_trainer.py).  ``tests/checkpoint_fault_soak.py``
  does the same with many more kills.
"""
import errno
import os
import os.path as osp
import random
import re
import time

import pytest
import torch
from mmengine.config import Config
from mmengine.fileio.backends import LocalBackend
from mmengine.registry import init_default_scope
from mmengine.runner import Runner

from fork_trainer import ForkTrainer
from test_tiny_world_training import world_options
from toy_modules import TOY_BASE_CONFIG
from dsvlm.engine import checkpoint_files as files
from dsvlm.registry import HOOKS

CONFIG = 'configs/tiny/llava_tiny.py'
ITERS = 20
MOMENTS = ('partial', 'written', 'published', 'pointed')


# --- unit tests -------------------------------------------------------------
def _toy_runner(work_dir, iters):
    cfg = Config.fromstring(TOY_BASE_CONFIG, '.py')
    cfg.merge_from_dict(dict(
        work_dir=str(work_dir), custom_hooks=[],
        train_cfg=dict(_delete_=True, by_epoch=False, max_iters=iters),
        default_hooks=dict(checkpoint=dict(
            type='SafeCheckpointHook', interval=1, by_epoch=False,
            max_keep_ckpts=1)),
        experiment_name=f'toy_{osp.basename(work_dir)}_{time.time_ns()}'))
    return Runner.from_cfg(cfg)


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    put = LocalBackend.put

    def full_disk(self, obj, filepath):
        if 'iter_3' in str(filepath):  # half written, then the disk is full
            with open(filepath, 'wb') as f:
                f.write(obj[:len(obj) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return put(self, obj, filepath)

    monkeypatch.setattr(LocalBackend, 'put', full_disk)
    runner = _toy_runner(tmp_path / 'toy', 3)
    with pytest.raises(OSError) as raised:
        runner.train()
    message = str(raised.value)
    assert raised.value.errno == errno.ENOSPC
    assert str(tmp_path / 'toy' / 'iter_3.pth') in message
    assert 'No space left on device' in message
    assert 'unchanged' in message
    names = sorted(os.listdir(tmp_path / 'toy'))
    assert not [n for n in names if n.startswith(files.TMP_PREFIX)], names
    assert [n for n in names if n.endswith('.pth')] == ['iter_2.pth']
    assert (tmp_path / 'toy' / 'last_checkpoint').read_text() == str(
        tmp_path / 'toy' / 'iter_2.pth')
    state = torch.load(tmp_path / 'toy' / 'iter_2.pth', weights_only=False)
    assert state['meta']['iter'] == 2


def test_a_misspelt_hook_argument_fails_when_built():
    init_default_scope('dsvlm')
    with pytest.raises(TypeError, match="'max_keep_ckpt' \\(did you mean "
                       "'max_keep_ckpts'\\?\\)"):
        HOOKS.build(dict(type='SafeCheckpointHook', interval=1,
                         max_keep_ckpt=1))
    hook = HOOKS.build(dict(type='SafeCheckpointHook', interval=1,
                            max_keep_ckpts=1, by_epoch=False))
    assert hook.max_keep_ckpts == 1


def test_resume_auto_finds_the_newest_complete_checkpoint(tmp_path):
    def save(name):
        torch.save(dict(meta=dict(iter=1), state_dict={}), tmp_path / name)

    save('iter_3.pth')
    save('iter_4.pth')
    with open(tmp_path / 'iter_4.pth', 'r+b') as f:  # cut by a kill
        f.truncate(osp.getsize(tmp_path / 'iter_4.pth') // 2)
    save(f'{files.TMP_PREFIX}iter_5.pth')
    (tmp_path / 'iter_6.pth').mkdir()  # a sharded save, cut short
    (tmp_path / 'iter_6.pth' / 'zero_pp_rank_0_optim_states.pt').write_text('')
    sharded = tmp_path / 'iter_7.pth'  # complete, then a shard lost bytes
    sharded.mkdir()
    (sharded / 'shard.distcp').write_bytes(b'x' * 10)
    files.write_manifest(str(sharded), step=7)
    (sharded / 'shard.distcp').write_bytes(b'x' * 5)
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_4.pth'))
    messages = []
    found = files.find_resume_checkpoint(str(tmp_path), messages.append)
    assert found == str(tmp_path / 'iter_3.pth')
    log = '\n'.join(messages)
    assert 'iter_4.pth: not a complete torch archive' in log
    assert f'{files.TMP_PREFIX}iter_5.pth: a temporary' in log
    assert 'iter_6.pth: a directory without' in log
    assert 'iter_7.pth: shard.distcp has 5 bytes' in log
    assert 'last_checkpoint names' in log

    # a complete sharded directory replaces an older one of the same name
    good = tmp_path / f'{files.TMP_PREFIX}iter_7.pth'
    good.mkdir()
    (good / 'shard.distcp').write_bytes(b'y' * 10)
    files.write_manifest(str(good), step=7)
    files.publish(str(good), str(sharded))
    assert files.find_resume_checkpoint(str(tmp_path)) == str(sharded)
    files.remove_checkpoint(str(sharded))
    assert sorted(os.listdir(tmp_path)) == [
        f'{files.TMP_PREFIX}iter_5.pth', 'iter_3.pth', 'iter_4.pth',
        'iter_6.pth', 'last_checkpoint']
    assert files.find_resume_checkpoint(str(tmp_path / 'empty')) is None


# --- fault injection --------------------------------------------------------
def _options(data_root, iters=ITERS):  # every iteration saved
    return world_options(data_root, iters) + [
        'default_hooks.checkpoint.interval=1',
        'default_hooks.checkpoint.max_keep_ckpts=1',
        'val_cfg=None', 'val_dataloader=None', 'val_evaluator=None']


def _check_resumable(work_dir):
    """What a kill must leave once a checkpoint was saved: a complete
    checkpoint that ``last_checkpoint`` names."""
    pointer = (work_dir / 'last_checkpoint').read_text()
    assert files.incomplete_reason(pointer) is None, pointer
    assert files.find_resume_checkpoint(str(work_dir)) is not None


def _next_pause(work_dir):
    """Two saves after the checkpoint the run resumes from: by then a save
    also removes an older checkpoint (the resumed one is kept)."""
    found = files.find_resume_checkpoint(str(work_dir))
    return (files.checkpoint_step(found)[1] if found else 0) + 2


def fault_runs(trainer, work_dir, args, moments, kills, seed, log_dir,
               timing):
    """Kill the run ``kills`` times at a seeded random moment, then once in
    each of the ``moments`` of a save (see checkpoint_faults.py), resuming
    each time with ``--resume``; then let it finish.

    A random moment is, one time in four, during start-up (building,
    resuming), else within about 4 iterations after the run's first
    training iteration (``timing``: :func:`uninterrupted`'s estimates).
    After every kill a complete checkpoint must be named by
    ``last_checkpoint``.  Returns one record per run: ``how``, ``moment``,
    ``code``, ``where`` (``start-up``, ``save`` when a temporary was left,
    else ``step``) and ``resumed`` (the step it resumed from).
    """
    rng = random.Random(seed)
    records = []
    plan = [('random', None)] * kills + [('pause', m) for m in moments]
    for index, (how, moment) in enumerate(plan + [('finish', None)]):
        mark, log = log_dir / f'mark_{index}', log_dir / f'run_{index}.log'
        env = {}
        if how == 'pause':
            moment = f'{moment}:{_next_pause(work_dir)}'
            env = dict(DSVLM_FAULT_PAUSE=moment, DSVLM_FAULT_MARK=mark)
        started = time.time()
        trainer.start([*args, '--resume'], log, env)  # tools/train.py argv
        if how == 'pause':
            _wait_for(mark.exists, started + 300, log)
            trainer.kill()
        elif how == 'random':
            if rng.random() < 0.25:
                time.sleep(rng.uniform(0, timing['startup']))
            else:
                _wait_for(lambda: TRAINING in log.read_text(), started + 300,
                          log)
                time.sleep(rng.uniform(0, 4 * timing['iteration']))
            trainer.kill()
        code = trainer.wait(timeout=600)
        text = log.read_text()
        if how == 'pause' or (how == 'random' and code != 0):
            assert code == -9, text[-3000:]  # killed, with no error before
        else:
            assert code == 0, text[-3000:]
        left = sorted(os.listdir(work_dir))
        if 'last_checkpoint' in left:
            _check_resumable(work_dir)
        records.append(dict(
            how=how, moment=moment, code=code, resumed=_resumed_step(text),
            where='start-up' if TRAINING not in text else 'save' if any(
                n.startswith((files.TMP_PREFIX, files.TRASH_PREFIX))
                for n in left) else 'step'))
        if code == 0:
            break
    return records


TRAINING = 'Iter(train)'


def _wait_for(condition, deadline, log):
    while not condition():
        assert time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)


def _resumed_step(text):
    match = re.search(r'--resume: resuming from \S*iter_(\d+)\.pth', text)
    return int(match.group(1)) if match else 0


def uninterrupted(trainer, work_dir, args, log, iters):
    """Run to the end; returns the times of its start-up and of an
    iteration (an upper estimate)."""
    started = time.time()
    trainer.start([*args[:1], '--work-dir', work_dir, *args[1:]], log)
    _wait_for(lambda: TRAINING in log.read_text(), started + 300, log)
    startup = time.time() - started
    assert trainer.wait(600) == 0, log.read_text()[-3000:]
    return dict(startup=startup,
                iteration=(time.time() - started - startup) / iters)


@pytest.fixture(scope='module')
def trainer():
    with ForkTrainer() as trainer:
        yield trainer


def _assert_same(full, resumed):
    assert sorted(full) == sorted(resumed)
    for key in full:
        assert torch.equal(full[key], resumed[key]), key


def test_killed_and_resumed_plain_run_ends_with_uninterrupted_weights(
        trainer, tmp_path):
    args = [CONFIG, '--cfg-options', *_options(tmp_path / 'world')]
    full, faulty = tmp_path / 'full', tmp_path / 'faulty'
    timing = uninterrupted(trainer, full, args, tmp_path / 'full.log', ITERS)
    story = fault_runs(
        trainer, faulty, [*args[:1], '--work-dir', faulty, *args[1:]],
        MOMENTS, kills=3, seed=0, log_dir=tmp_path, timing=timing)
    assert len(story) == 3 + len(MOMENTS) + 1, story  # the last one ended
    logs = {p.name: p.read_text() for p in tmp_path.glob('run_*.log')}
    # what each moment left, and what the next run made of it
    partial, written, published, pointed, finish = (
        logs[f'run_{3 + i}.log'] for i in range(5))
    assert '.tmp-iter_' in written and ': a temporary' in written, story
    assert 'Removed' in written and 'Removed' in published, story
    assert _resumed_step(published) == _resumed_step(written) + 1, story
    # renamed but not yet named by last_checkpoint: the newest still wins
    assert _resumed_step(pointed) == _resumed_step(published) + 2, story
    assert _resumed_step(finish) == _resumed_step(pointed) + 2, story
    full_state = torch.load(full / f'iter_{ITERS}.pth',
                            weights_only=False)['state_dict']
    resumed = torch.load(faulty / f'iter_{ITERS}.pth',
                         weights_only=False)['state_dict']
    _assert_same(full_state, resumed)


def test_killed_and_resumed_deepspeed_run_ends_with_uninterrupted_weights(
        trainer, tmp_path):
    pytest.importorskip('deepspeed')
    from dsvlm.engine.strategies.deepspeed_zero import \
        deepspeed_checkpoint_to_state_dict
    iters = 4
    args = [CONFIG, '--strategy', 'deepspeed_zero2', '--cfg-options',
            *_options(tmp_path / 'world', iters)]
    full, faulty = tmp_path / 'full', tmp_path / 'faulty'
    timing = uninterrupted(trainer, full, args, tmp_path / 'full.log', iters)
    assert files.MANIFEST in os.listdir(full / f'iter_{iters}.pth')
    story = fault_runs(
        trainer, faulty, [*args[:1], '--work-dir', faulty, *args[1:]],
        ['partial', 'published'], kills=0, seed=1, log_dir=tmp_path,
        timing=timing)
    assert len(story) == 3, story
    _assert_same(deepspeed_checkpoint_to_state_dict(full),
                 deepspeed_checkpoint_to_state_dict(faulty))


def test_a_resumed_dsvlm_run_draws_the_noise_of_the_uninterrupted_one(
        trainer, tmp_path):
    """The diffusion noise, timesteps and VAE samples come from a generator
    whose position is in the checkpoint: resumed from iteration 2, the
    tiny DS-VLM ends with exactly the weights of the run that went on."""
    iters = 4
    args = ['configs/tiny/dsvlm_tiny.py', '--cfg-options',
            *_options(tmp_path / 'world', iters), 'custom_hooks=[]',
            'default_hooks.checkpoint.max_keep_ckpts=-1']
    full, resumed = tmp_path / 'full', tmp_path / 'resumed'
    uninterrupted(trainer, full, args, tmp_path / 'full.log', iters)
    resumed.mkdir()
    (resumed / 'iter_2.pth').write_bytes((full / 'iter_2.pth').read_bytes())
    (resumed / 'last_checkpoint').write_text(str(resumed / 'iter_2.pth'))
    log = tmp_path / 'resumed.log'
    trainer.start([*args[:1], '--work-dir', resumed, '--resume', *args[1:]],
                  log)
    assert trainer.wait(600) == 0, log.read_text()[-3000:]
    assert _resumed_step(log.read_text()) == 2

    def weights(work_dir, step):
        return torch.load(work_dir / f'iter_{step}.pth',
                          weights_only=False)['state_dict']
    assert int(weights(full, 2)['supervisors.0.noise.count']) == 2
    _assert_same(weights(full, iters), weights(resumed, iters))
