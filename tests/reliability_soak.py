"""Soak the tiny DS-VLM: a long run with periodic saves and one fault of
each kind, against an uninterrupted twin (not collected by pytest).

    python tests/reliability_soak.py [--iters 2000] [--save-interval 200]
        [--batch-size 8] [--work-dir DIR]

Both runs train ``configs/tiny/dsvlm_tiny.py`` (small world, every image
reconstructed by a trainable diffusion branch) with ``max_keep_ckpts=1``,
``bad_samples`` skipping and ``nonfinite='skip'``, on data with one broken
image and with a nan loss injected at one iteration (the same in both).
The faulty run is also SIGKILLed in a training step, while it loads a
sample, and in a save (temporary written, not yet renamed); one save fails
as on a full disk.  It is resumed with ``--resume`` after each.  The script
prints the RSS of the uninterrupted run over its iterations (memory must
stay flat), the faults and what the run did after each, and whether the
final weights equal the uninterrupted run's (``torch.equal``, every
tensor, the diffusion noise position included).
"""
import argparse
import json
import re
import sys
import tempfile
import threading
import time
import os.path as osp
from pathlib import Path

import psutil
import torch

sys.path[:0] = [osp.dirname(osp.dirname(osp.abspath(__file__))),
                osp.dirname(osp.abspath(__file__))]

from fork_trainer import ForkTrainer  # noqa: E402
from test_safe_checkpoint import _options, _resumed_step  # noqa: E402
from test_tiny_world_training import WORLD  # noqa: E402

CONFIG = 'configs/tiny/dsvlm_tiny.py'
ITER_RE = re.compile(r'Iter\(train\) \[\s*(\d+)/')


def soak_options(root, iters, save_interval, batch_size):
    return _options(root / 'world', iters) + [
        f'default_hooks.checkpoint.interval={save_interval}',
        'default_hooks.logger.interval=10', 'custom_hooks=[]',
        f'train_dataloader.batch_size={batch_size}',
        'optim_wrapper.nonfinite=skip',
        'train_dataloader.dataset.bad_samples.policy=skip',
        'train_dataloader.dataset.bad_samples.max_fraction=0.05']


def break_one_image(world):
    """Overwrite the image of the 6th training sample with garbage; returns
    its sample id."""
    from mmengine.config import Config

    from dsvlm.datasets.tiny.shapes import ensure_shapes_world
    params = dict(Config.fromfile(CONFIG).train_dataloader.dataset.world,
                  **WORLD)  # as soak_options make the runs build it
    root = Path(ensure_shapes_world(world, **params))
    records = json.loads((root / 'instruct.json').read_text())
    record = [r for r in records if 'image' in r][5]
    (root / 'images' / record['image']).write_bytes(b'not an image')
    return record['id']


def last_iteration(log):
    found = ITER_RE.findall(log.read_text(errors='replace'))
    return int(found[-1]) if found else 0


class RssSampler:
    """Samples the RSS of a process and the iteration its log reached."""

    def __init__(self, pid, log, every=1.0):
        self.samples, self._stop = [], threading.Event()
        self._thread = threading.Thread(target=self._run,
                                        args=(pid, log, every), daemon=True)
        self._thread.start()

    def _run(self, pid, log, every):
        process = psutil.Process(pid)
        while not self._stop.wait(every):
            try:
                rss = process.memory_info().rss
            except psutil.NoSuchProcess:
                return
            self.samples.append((last_iteration(log), rss / 2**20))

    def stop(self):
        self._stop.set()
        self._thread.join()
        return self.samples


def wait_for(condition, timeout, log):
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise TimeoutError(log.read_text()[-3000:])
        time.sleep(0.2)


def faulty_runs(trainer, argv, work_dir, root, env, save_interval,
                batch_size):
    """Run, kill or fail once per kind of fault, resume each time; returns
    a record per run."""
    mark = root / 'mark'
    half = save_interval // 2
    faults = [  # the kills in a step and in loading come after a save
        ('kill in a training step', 'step'),
        ('kill while loading a sample', 'pause'),
        ('kill in a save (written, not renamed)', 'pause'),
        ('full disk in a save', 'fails'),
        ('none: run to the end', 'ends'),
    ]
    records = []
    for k, (name, how) in enumerate(faults):
        found = [int(p.stem[5:]) for p in work_dir.glob('iter_*.pth')]
        resumed_from = max(found, default=0)
        next_save = (resumed_from // save_interval + 1) * save_interval
        extra = {}
        if name.startswith('kill while loading'):
            # the resumed loop reads the samples of the steps done again
            extra = dict(DSVLM_FAULT_DATA_PAUSE=str(
                (next_save + half) * batch_size))
        elif name.startswith('kill in a save'):
            extra = dict(DSVLM_FAULT_PAUSE=f'written:{next_save}')
        elif name.startswith('full disk'):
            extra = dict(DSVLM_FAULT_FULL_DISK=str(next_save))
        if mark.exists():
            mark.unlink()
        log = root / f'faulty_{k}.log'
        run_env = dict(env, DSVLM_FAULT_MARK=str(mark), **extra)
        trainer.start([argv[0], '--work-dir', work_dir, '--resume',
                       *argv[1:]], log, run_env)
        if how == 'step':
            target = next_save + half
            wait_for(lambda: last_iteration(log) >= target, 900, log)
            trainer.kill()
        elif how == 'pause':
            wait_for(mark.exists, 900, log)
            trainer.kill()
        code = trainer.wait(timeout=1800)
        text = log.read_text(errors='replace')
        records.append(dict(
            fault=name, exit_code=code, resumed_from=_resumed_step(text),
            reached=last_iteration(log),
            error=next((line for line in text.splitlines()
                        if 'No space left on device' in line), '')[:200]))
        expected = {'step': -9, 'pause': -9, 'fails': 1, 'ends': 0}[how]
        if code != expected:
            raise RuntimeError(f'{name}: exit code {code}, expected '
                               f'{expected}\n{text[-3000:]}')
    return records


def weights(work_dir, iters):
    return torch.load(Path(work_dir) / f'iter_{iters}.pth',
                      weights_only=False)['state_dict']


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--iters', type=int, default=2000)
    parser.add_argument('--save-interval', type=int, default=200)
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--work-dir', help='default: a temporary folder')
    args = parser.parse_args()
    root = Path(args.work_dir or tempfile.mkdtemp(prefix='soak_'))
    root.mkdir(parents=True, exist_ok=True)
    broken = break_one_image(root / 'world')
    argv = [CONFIG, '--cfg-options',
            *soak_options(root, args.iters, args.save_interval,
                          args.batch_size)]
    env = dict(DSVLM_FAULT_NAN_ITER=str(args.iters // 2 + 3))
    began = time.time()
    with ForkTrainer() as trainer:
        log = root / 'full.log'
        pid = trainer.start([argv[0], '--work-dir', root / 'full',
                             *argv[1:]], log, env)
        sampler = RssSampler(pid, log)
        code = trainer.wait(timeout=7200)
        samples = sampler.stop()
        if code != 0:
            raise RuntimeError(log.read_text()[-3000:])
        full_time = time.time() - began
        records = faulty_runs(trainer, argv, root / 'faulty', root, env,
                              args.save_interval, args.batch_size)
    full, resumed = (weights(root / d, args.iters) for d in
                     ('full', 'faulty'))
    equal = sorted(full) == sorted(resumed) and all(
        torch.equal(full[k], resumed[k]) for k in full)
    report(args, samples, records, equal, broken, root, full_time,
           time.time() - began)
    return 0 if equal else 1


def report(args, samples, records, equal, broken, root, full_time, total):
    print(f'== tiny DS-VLM, {args.iters} iterations, batch '
          f'{args.batch_size}, a save every {args.save_interval} '
          f'(max_keep_ckpts=1); uninterrupted run {full_time:.0f} s')
    warm = [s for s in samples if s[0] >= min(100, args.iters // 10)]
    if warm:
        start, end = warm[0], warm[-1]
        peak = max(rss for _, rss in warm)
        print(f'RSS of the uninterrupted run: {start[1]:.0f} MiB at '
              f'iteration {start[0]}, {end[1]:.0f} MiB at iteration '
              f'{end[0]} (peak {peak:.0f} MiB; growth '
              f'{end[1] - start[1]:+.1f} MiB)')
        for q in (0.25, 0.5, 0.75):
            it, rss = warm[int(q * (len(warm) - 1))]
            print(f'  iteration {it}: {rss:.0f} MiB')
    for name in ('full', 'faulty'):
        skipped = root / name / 'bad_samples.jsonl'
        ids = ([json.loads(line)['id'] for line in
                skipped.read_text().splitlines()] if skipped.exists()
               else [])
        nan = re.findall(r'non-finite[^\n]*', '\n'.join(
            p.read_text(errors='replace') for p in
            sorted(root.glob(f'{name}*.log'))))
        print(f'{name}: skipped samples {sorted(set(ids))} (broken image: '
              f'{broken!r}; {len(ids)} records, one per run that met it); '
              f'non-finite step messages: {len(nan)}')
    for r in records:
        print(f'fault: {r["fault"]}: exit {r["exit_code"]}, resumed from '
              f'iteration {r["resumed_from"]}, reached {r["reached"]}'
              + (f'; {r["error"]}' if r['error'] else ''))
    print(f'final weights equal to the uninterrupted run: {equal} '
          f'({total:.0f} s, {root})')


if __name__ == '__main__':
    sys.exit(main())
