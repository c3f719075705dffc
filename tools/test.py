"""Evaluate a checkpoint on a config's test set (MMPretrain conventions).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--strategy ddp]
        [--cfg-options k=v ...] [--launcher none|pytorch|slurm|mpi]

CHECKPOINT is a plain ``.pth`` or a DeepSpeed / FSDP2 checkpoint directory
(read in one piece, whatever number of processes wrote it).  Testing runs
under the plain Runner (``--strategy ddp``) whatever strategy the config
trains with; the diffusion branch is not built.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from dsvlm.engine import load_config  # noqa: E402
from dsvlm.engine.cli import (add_runner_args, apply_runner_args,  # noqa
                              parse_runner_args)
from dsvlm.engine.config import for_inference  # noqa: E402
from dsvlm.engine.compat import (apply_mmengine_patches,  # noqa: E402
                                 finish_distributed)
from dsvlm.registry import RUNNERS  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test a checkpoint')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file or sharded '
                        'checkpoint directory')
    parser.add_argument('--strategy', default='ddp',
                        help='strategy preset to test under (default: ddp)')
    add_runner_args(parser, 'test_dataloader.batch_size=1')
    return parse_runner_args(parser, argv)


def merge_args(cfg, args):
    apply_runner_args(cfg, args)
    cfg.resume = False
    for_inference(cfg)
    if not osp.isdir(args.checkpoint):
        cfg.load_from = args.checkpoint
    else:  # a sharded checkpoint: the model reads it whole when built
        cfg.load_from = None
        cfg.model.pretrained_pth = args.checkpoint
    return cfg


def main(argv=None):
    args = parse_args(argv)
    apply_mmengine_patches()
    cfg = load_config(args.config, args.cfg_options, launcher=args.launcher,
                      strategy=args.strategy)
    cfg = merge_args(cfg, args)
    runner = RUNNERS.build(cfg)
    metrics = runner.test()
    finish_distributed()
    return metrics


if __name__ == '__main__':
    main()
