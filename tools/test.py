"""Evaluate a checkpoint on a config's test set (MMPretrain conventions).

    python tools/test.py CONFIG CHECKPOINT [--benchmark NAME|FILE]
        [--work-dir DIR] [--strategy ddp] [--cfg-options k=v ...]
        [--launcher none|pytorch|slurm|mpi]

CHECKPOINT is a plain ``.pth`` or a DeepSpeed / FSDP2 checkpoint directory
(read in one piece, whatever number of processes wrote it).  Testing runs
under the plain Runner (``--strategy ddp``) whatever strategy the config
trains with; the diffusion branch is not built.

``--benchmark`` replaces the config's test set and metric with those of a
benchmark config: a name of ``configs/benchmarks/`` (``mmbench_dev_en``,
``mme``, ``pope``, ``tiny_mcq``...) or a config file.  Per-sample
predictions go to ``WORK_DIR/predictions/<benchmark>.tsv``, which
VLMEvalKit's scorers read, and the scores to
``WORK_DIR/<benchmark>_metrics.json``.  Several processes (``tools/dist_test.sh``) give
the score of one.
"""
import argparse
import json
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from dsvlm.engine import load_config  # noqa: E402
from dsvlm.engine.benchmark import merge_benchmark  # noqa: E402
from dsvlm.engine.config_keys import check_config_keys  # noqa: E402
from dsvlm.engine.config import complete_config  # noqa: E402
from dsvlm.engine.config import world_size_from_env  # noqa: E402
from dsvlm.engine.cli import (add_runner_args, apply_runner_args,  # noqa
                              parse_runner_args)
from dsvlm.engine.config import for_inference  # noqa: E402
from dsvlm.engine.compat import (apply_mmengine_patches,  # noqa: E402
                                 exit_distributed_process, finish_distributed)
from dsvlm.registry import RUNNERS  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test a checkpoint')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file or sharded '
                        'checkpoint directory')
    parser.add_argument('--strategy', default='ddp',
                        help='strategy preset to test under (default: ddp)')
    parser.add_argument('--benchmark', help='a benchmark of configs/'
                        'benchmarks/ (e.g. mmbench_dev_en, mme) or a '
                        'benchmark config file')
    add_runner_args(parser, 'test_dataloader.batch_size=1')
    return parse_runner_args(parser, argv)


def merge_args(cfg, args):
    apply_runner_args(cfg, args)
    fill_work_dir(cfg.get('test_evaluator'), cfg.work_dir)
    cfg.resume = False
    for_inference(cfg)
    if not osp.isdir(args.checkpoint):
        cfg.load_from = args.checkpoint
    else:  # a sharded checkpoint: the model reads it whole when built
        cfg.load_from = None
        cfg.model.pretrained_pth = args.checkpoint
    return cfg


def fill_work_dir(evaluator, work_dir):
    """``{work_dir}`` in the metrics' ``prediction_file``."""
    metrics = evaluator if isinstance(evaluator, (list, tuple)) else \
        [evaluator] if evaluator else []
    for metric in metrics:
        if isinstance(metric.get('prediction_file'), str):
            metric['prediction_file'] = metric['prediction_file'].replace(
                '{work_dir}', work_dir)


def save_metrics(metrics, work_dir, benchmark=None):
    """``WORK_DIR/<benchmark name or 'test'>_metrics.json`` (main process)."""
    from mmengine.dist import is_main_process
    if not is_main_process():
        return None
    name = osp.splitext(osp.basename(benchmark))[0] if benchmark else 'test'
    path = osp.join(work_dir, f'{name}_metrics.json')
    os.makedirs(work_dir, exist_ok=True)
    with open(path + '.tmp', 'w') as f:
        json.dump(metrics, f, indent=1, sort_keys=True)
    os.replace(path + '.tmp', path)
    return path


def main(argv=None):
    args = parse_args(argv)
    apply_mmengine_patches()
    cfg = load_config(args.config, launcher=args.launcher,
                      strategy=args.strategy, complete=False)
    if args.benchmark:
        merge_benchmark(cfg, args.benchmark)
    if args.cfg_options:  # after the benchmark's, which they may change
        cfg.merge_from_dict(args.cfg_options)
        check_config_keys(cfg, cfg_options=args.cfg_options)
    cfg = merge_args(cfg, args)
    complete_config(cfg, world_size=world_size_from_env(args.launcher))
    runner = RUNNERS.build(cfg)
    metrics = runner.test()
    save_metrics(metrics, cfg.work_dir, args.benchmark)
    finish_distributed()
    return metrics


if __name__ == '__main__':
    main()
    exit_distributed_process()
