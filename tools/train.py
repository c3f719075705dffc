"""Train a model from a config (MMPretrain's ``tools/train.py`` conventions).

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
        [--strategy ddp|deepspeed_zero2|deepspeed_zero3|...]
        [--cfg-options k=v ...] [--launcher none|pytorch|slurm|mpi]

``runner_type`` and ``strategy`` in the config pick the engine (a preset of
``configs/_base_/strategies/`` inherited by the config); ``--strategy NAME``
applies another preset without editing the config.  For several processes
use ``tools/dist_train.sh``.
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from dsvlm.engine import complete_config, load_config  # noqa: E402
from dsvlm.engine.config import world_size_from_env  # noqa: E402
from dsvlm.engine.strategy_config import strategy_kind  # noqa: E402
from dsvlm.engine.cli import (add_runner_args, apply_runner_args,  # noqa
                              parse_runner_args)
from dsvlm.engine.compat import (apply_mmengine_patches,  # noqa: E402
                                 exit_distributed_process, finish_distributed)
from dsvlm.registry import RUNNERS  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from the given checkpoint, or with `auto` (the same as '
        'no value) from the newest complete checkpoint in the work dir')
    parser.add_argument('--amp', action='store_true',
                        help='enable automatic-mixed-precision training')
    parser.add_argument(
        '--strategy', help='distributed strategy preset, replacing the '
        "config's (a file name of configs/_base_/strategies/: ddp, "
        'deepspeed_zero2, deepspeed_zero3, deepspeed_zero3_offload, fsdp)')
    add_runner_args(parser, 'model.llm.pretrained=/x '
                    'train_dataloader.batch_size=4')
    return parse_runner_args(parser, argv)


def merge_args(cfg, args):
    """Apply the command line to the config."""
    apply_runner_args(cfg, args)

    if args.amp:
        from dsvlm.engine.strategy_config import (mmengine_wrapper_type,
                                                  same_guard)
        wrapper_type = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if mmengine_wrapper_type(wrapper_type) not in ('OptimWrapper',
                                                       'AmpOptimWrapper'):
            raise ValueError(
                f'--amp needs optim_wrapper.type OptimWrapper or '
                f'AmpOptimWrapper (or their FiniteStep* twins), but the '
                f'config has {wrapper_type!r}.')
        cfg.optim_wrapper.type = same_guard(wrapper_type, 'AmpOptimWrapper')
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')

    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def resolve_auto_resume(cfg):
    """``resume=True`` without ``load_from`` (``--resume [auto]``): the
    newest complete checkpoint of the work_dir, skipping (and naming)
    incomplete ones; no checkpoint there starts the run from scratch."""
    if cfg.get('resume') is not True or cfg.get('load_from') is not None:
        return cfg
    from mmengine.logging import print_log

    from dsvlm.engine.checkpoint_files import find_resume_checkpoint

    def log(message):
        if os.environ.get('RANK', '0') == '0':
            print_log(message, logger='current')

    found = find_resume_checkpoint(cfg.work_dir, log=log)
    if found is None:
        log(f'--resume: no complete checkpoint in {cfg.work_dir}; training '
            'from scratch')
        cfg.resume = False
    else:
        log(f'--resume: resuming from {found}')
        cfg.load_from = found
    return cfg


def single_process_deepspeed_env(cfg):
    """Let DeepSpeed run in one process without a launcher.

    With ``--launcher none`` MMEngine leaves distributed set-up to
    ``deepspeed.initialize``, which then looks for MPI (``mpi4py``).  A
    one-process ``env://`` group avoids that.
    """
    if cfg.launcher != 'none' or strategy_kind(cfg) != 'deepspeed':
        return
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    for key, value in dict(RANK='0', LOCAL_RANK='0', WORLD_SIZE='1',
                           MASTER_ADDR='127.0.0.1',
                           MASTER_PORT=str(port)).items():
        os.environ.setdefault(key, value)


def main(argv=None):
    args = parse_args(argv)
    apply_mmengine_patches()
    cfg = load_config(args.config, args.cfg_options, launcher=args.launcher,
                      strategy=args.strategy, complete=False)
    cfg = merge_args(cfg, args)
    resolve_auto_resume(cfg)
    complete_config(cfg, world_size=world_size_from_env(args.launcher))
    single_process_deepspeed_env(cfg)
    runner = RUNNERS.build(cfg)  # `runner_type` picks the class
    runner.train()
    finish_distributed()


if __name__ == '__main__':
    main()
    exit_distributed_process()
