"""Scan a config's annotation files and images before a long run.

    python tools/check_data.py CONFIG [--split train|val|test]
        [--workers N] [--no-decode] [--cfg-options k=v ...]

Reads every sample as training does and reports every problem found:
malformed JSON lines, bad records, conversations without an assistant turn,
image paths outside the image folder; missing, unreadable, corrupt (JPEG),
oversized or too elongated images (each image goes through the whole
pipeline: decoding, mode conversion, padding, the image processor); samples
longer than ``max_length`` after splicing the image features (with the
supervised tokens truncation keeps) and samples left with none.  Prints the
lengths after splicing and the supervised tokens per sample, a summary, and
exits with 1 when there is any problem.
"""
import argparse
import collections
import copy
import multiprocessing
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

from dsvlm.engine.config import complete_config, leaf_datasets  # noqa: E402
from dsvlm.registry import DATASETS  # noqa: E402

SPLITS = ('train', 'val', 'test')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='config file path')
    parser.add_argument('--split', choices=SPLITS, action='append',
                        help='dataloader to check (repeatable; default: '
                        'all)')
    parser.add_argument('--workers', type=int, default=1,
                        help='processes that check samples in parallel')
    parser.add_argument('--no-decode', action='store_true',
                        help='only check that images exist, do not decode')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, e.g. max_length=4096')
    return parser.parse_args(argv)


def dataset_configs(cfg, splits):
    """``(split, dataset config)`` of each distinct leaf dataset."""
    seen = set()
    for split in splits:
        loader = cfg.get(f'{split}_dataloader')
        if not loader or loader.get('dataset') is None:
            continue
        for ds_cfg in leaf_datasets(loader['dataset']):
            key = repr(ds_cfg)
            if key not in seen:
                seen.add(key)
                yield split, copy.deepcopy(ds_cfg)


_DATASET = None  # the dataset a worker process checks


def _check_range(args):
    start, stop, decode = args
    return _check_indices(_DATASET, range(start, stop), decode)


def _check_indices(dataset, indices, decode):
    """``(problems, lengths)``: ``lengths`` holds ``(tokens after splicing,
    supervised tokens kept)`` of each sample that tokenises."""
    problems, lengths = [], []
    for i in indices:
        if hasattr(dataset, 'check_sample'):
            check = dataset.check_sample(i, decode_image=decode)
            problems += check.problems
            if check.num_tokens is not None:
                lengths.append((check.num_tokens, check.num_supervised))
        else:  # any other dataset: its items must load
            try:
                dataset[i]
            except Exception as e:  # report, go on with the next sample
                problems.append(f'[{type(e).__name__}] '
                                f'{type(dataset).__name__}[{i}]: {e}')
    return problems, lengths


def check_dataset(dataset, workers=1, decode=True, chunk=2000):
    """``(problems, lengths)`` of every sample of ``dataset`` (LlavaDataset:
    also the records it skipped as invalid; see :func:`_check_indices`)."""
    global _DATASET
    problems, lengths = list(getattr(dataset, 'problems', [])), []
    n = len(dataset)
    ranges = [(s, min(s + chunk, n), decode) for s in range(0, n, chunk)]
    if workers <= 1 or n <= chunk:
        found = [_check_indices(dataset, range(r[0], r[1]), decode)
                 for r in ranges]
    else:
        os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
        _DATASET = dataset
        with multiprocessing.get_context('fork').Pool(workers) as pool:
            found = list(pool.imap(_check_range, ranges))
        _DATASET = None
    for range_problems, range_lengths in found:
        problems += range_problems
        lengths += range_lengths
    return problems, lengths


def describe_lengths(lengths) -> str:
    """One line on the lengths after splicing and the supervision kept."""
    if not lengths:
        return 'no sample tokenised'
    tokens = sorted(n for n, _ in lengths)
    supervised = sorted(s for _, s in lengths)

    def spread(values):
        return (f'min {values[0]}, median {values[len(values) // 2]}, '
                f'max {values[-1]}')
    line = f'tokens after splicing: {spread(tokens)}'
    if supervised[-1]:  # test sets have prompts only
        line += f'; supervised tokens kept: {spread(supervised)}'
    return line


def build_for_check(ds_cfg):
    """The dataset, keeping invalid records out instead of failing on them."""
    if ds_cfg.get('type') in ('LlavaDataset', 'dsvlm.LlavaDataset'):
        ds_cfg['skip_invalid'] = True
        # report skips here, do not record them as a run would
        ds_cfg['bad_samples'] = None
    return DATASETS.build(ds_cfg)


def describe(ds_cfg):
    return ds_cfg.get('ann_file') or ds_cfg.get('type')


def main(argv=None):
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    complete_config(cfg, world_size=1)
    init_default_scope(cfg.get('default_scope', 'dsvlm'))

    total, counts = 0, collections.Counter()
    for split, ds_cfg in dataset_configs(cfg, args.split or SPLITS):
        name = f'{split}: {describe(ds_cfg)}'
        try:
            dataset = build_for_check(ds_cfg)
        except Exception as e:  # a dataset that cannot even be built
            problems, lengths = [f'[build_error] {type(e).__name__}: {e}'], []
            size = '?'
        else:
            problems, lengths = check_dataset(dataset, args.workers,
                                              not args.no_decode)
            size = len(dataset)
        print(f'== {name} ({size} samples): {len(problems)} problems')
        if lengths:
            print(f'  {describe_lengths(lengths)}')
        for problem in problems:
            print(f'  {problem}')
            kind = getattr(problem, 'kind', str(problem)[1:].split(']')[0])
            counts[kind] += 1
        total += len(problems)

    print('== summary: ' + (', '.join(f'{k}: {v}' for k, v in sorted(
        counts.items())) if total else 'no problems found'))
    return 1 if total else 0


if __name__ == '__main__':
    sys.exit(main())
