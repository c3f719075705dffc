"""Kill a tiny LLaVA run many times and check that it still ends with the
weights of an uninterrupted run (the long form of the fault-injection tests
of test_safe_checkpoint.py; not collected by pytest).

    python tests/checkpoint_fault_soak.py [--kills 30] [--strategy plain|
        deepspeed_zero2|ddp|fsdp] [--seed 0] [--work-dir DIR]

Every iteration saves a checkpoint, ``max_keep_ckpts=1``.  The run is
SIGKILLed ``--kills`` times at seeded random moments (start-up, training
steps, data loading, saves), then once inside each window of a save (half
written, written, renamed, ``last_checkpoint`` moved), and resumed with
``--resume`` after each kill.  ``plain`` and ``deepspeed_zero2`` run in one
process (forks of a server that imported everything once); ``ddp`` and
``fsdp`` run 2 processes through tools/dist_train.sh (a kill: torchrun and
both ranks at once).
Prints where the kills landed and whether the final weights are equal.
"""
import argparse
import os
import os.path as osp
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

sys.path[:0] = [osp.dirname(osp.dirname(osp.abspath(__file__))),
                osp.dirname(osp.abspath(__file__))]

from fork_trainer import REPO, TESTS, ForkTrainer  # noqa: E402
from ports import free_port  # noqa: E402
from test_safe_checkpoint import (CONFIG, MOMENTS, _options,  # noqa: E402
                                  fault_runs, uninterrupted)


class DistTrainer:
    """ForkTrainer's interface for 2-process runs of tools/dist_train.sh."""

    def __init__(self, nproc=2):
        self.nproc, self.proc = nproc, None

    def start(self, argv, log, env=None):
        env = dict(os.environ, **(env or {}), CUDA_VISIBLE_DEVICES='',
                   OMP_NUM_THREADS='1', PORT=str(free_port()),
                   PYTHON=sys.executable)
        env['PYTHONPATH'] = os.pathsep.join([REPO, TESTS])
        argv = [str(a) for a in argv]
        with open(log, 'w') as out:
            self.proc = subprocess.Popen(
                ['bash', 'tools/dist_train.sh', argv[0], str(self.nproc),
                 *argv[1:]], cwd=REPO, env=env, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)
        return self.proc.pid

    def kill(self):
        """SIGKILL torchrun and every rank at once (torchrun starts the
        ranks in sessions of their own: killing its group misses them)."""
        import psutil
        try:
            tree = psutil.Process(self.proc.pid)
            tree = [tree] + tree.children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for process in tree:
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(tree[1:], timeout=30)  # wait() reaps torchrun

    def wait(self, timeout=600):
        code = self.proc.wait(timeout=timeout)
        return -9 if code in (-9, 137) else code

    def close(self):
        pass


def final_state(work_dir, iters, strategy):
    path = osp.join(work_dir, f'iter_{iters}.pth')
    if strategy == 'fsdp':
        from dsvlm.engine.strategies.fsdp2 import \
            fsdp2_checkpoint_to_state_dict
        return fsdp2_checkpoint_to_state_dict(path)
    if strategy.startswith('deepspeed'):
        from dsvlm.engine.strategies.deepspeed_zero import \
            deepspeed_checkpoint_to_state_dict
        return deepspeed_checkpoint_to_state_dict(path)
    return torch.load(path, map_location='cpu',
                      weights_only=False)['state_dict']


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--kills', type=int, default=30)
    parser.add_argument('--strategy', default='plain',
                        choices=['plain', 'deepspeed_zero2', 'ddp',
                                 'fsdp'])
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--work-dir', help='default: a temporary folder')
    args = parser.parse_args()
    root = Path(args.work_dir or tempfile.mkdtemp(prefix='ckpt_soak_'))
    root.mkdir(parents=True, exist_ok=True)
    # random kills move ~2 iterations on average, each window 1 or 2
    iters = 4 * args.kills + 2 * len(MOMENTS) + 4
    options = _options(root / 'world', iters)
    several = args.strategy in ('ddp', 'fsdp')
    config = CONFIG
    if several:  # the ranks import the fault module (--cfg-options cannot)
        config = root / 'config.py'
        config.write_text(f"_base_ = [{osp.join(REPO, CONFIG)!r}]\n"
                          "custom_imports = dict(imports=['checkpoint_faults'"
                          "], allow_failed_imports=False)\n")
    argv = [config] + (['--strategy', args.strategy]
                       if args.strategy != 'plain' else [])
    argv += ['--cfg-options', *options]
    trainer = DistTrainer() if several else ForkTrainer()
    began = time.time()
    try:
        timing = uninterrupted(trainer, root / 'full', argv,
                               root / 'full.log', iters)
        records = fault_runs(
            trainer, root / 'faulty',
            [argv[0], '--work-dir', root / 'faulty', *argv[1:]], MOMENTS,
            kills=args.kills, seed=args.seed, log_dir=root, timing=timing)
    finally:
        trainer.close()
    full = final_state(root / 'full', iters, args.strategy)
    resumed = final_state(root / 'faulty', iters, args.strategy)
    equal = sorted(full) == sorted(resumed) and all(
        torch.equal(full[k], resumed[k]) for k in full)
    kills = [r for r in records if r['code'] == -9]
    landed = Counter(r['where'] for r in kills if r['how'] == 'random')
    print(f'{args.strategy}: {iters} iterations, a checkpoint at each, '
          f'max_keep_ckpts=1; {len(kills)} SIGKILLs: '
          f'{sum(landed.values())} at random moments (in {dict(landed)}) '
          f'and {len(kills) - sum(landed.values())} inside the windows of a '
          f'save; {len(records) - 1} resumes; final weights equal to the '
          f'uninterrupted run: {equal} ({time.time() - began:.0f} s, {root})')
    return 0 if equal else 1


if __name__ == '__main__':
    sys.exit(main())
