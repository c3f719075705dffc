"""Parameter counts of a config's model, built on the meta device.

    python tools/inspect_model.py configs/llava/clip_vicuna7b.py [--json]

The model is built from the architecture configs in the config file
(``architecture_only``): no weights are read, nothing is allocated, so a 13B
model takes seconds.  ``pretrained_pth`` is ignored for the same reason.
Prints total and trainable parameters of the vision encoder, the connector,
the LLM, each supervisor, and the whole model.
"""
import argparse
import contextlib
import json
import os.path as osp
import sys
from collections import OrderedDict

import torch
from mmengine.config import DictAction
from mmengine.registry import init_default_scope

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

# Libraries log to stdout on import (deepspeed's accelerator notice); keep
# stdout for the table or the JSON.
with contextlib.redirect_stdout(sys.stderr):
    from dsvlm.engine.config import load_config  # noqa: E402
    from dsvlm.models.hf_build import architecture_only  # noqa: E402
    from dsvlm.registry import MODELS  # noqa: E402

COMPONENTS = ('vision_encoder', 'connector', 'llm')


def build_meta_model(cfg):
    """The config's model on the meta device, without weights or tokenizer."""
    init_default_scope(cfg.get('default_scope', 'dsvlm'))
    model_cfg = cfg.model.copy()
    model_cfg.update(tokenizer=None, pretrained_pth=None)
    with torch.device('meta'), architecture_only():
        return MODELS.build(model_cfg)


def _component_of(name: str, supervisor_names: dict) -> str:
    head = name.split('.', 1)[0]
    if head == 'supervisors':
        return supervisor_names[int(name.split('.')[1])]
    return head if head in COMPONENTS else 'other'


def count_parameters(model) -> 'OrderedDict[str, dict]':
    """``{component: {'total': n, 'trainable': n}}`` plus a ``'total'`` row.

    Shared (tied) parameters are counted once, as ``named_parameters`` does.
    """
    supervisors = getattr(model, 'supervisors', [])
    supervisor_names = {
        i: f'supervisors.{i} ({type(s).__name__})'
        for i, s in enumerate(supervisors)
    }
    rows = OrderedDict(
        (name, dict(total=0, trainable=0))
        for name in (*COMPONENTS, *supervisor_names.values()))
    for name, param in model.named_parameters():
        row = rows.setdefault(_component_of(name, supervisor_names),
                              dict(total=0, trainable=0))
        row['total'] += param.numel()
        if param.requires_grad:
            row['trainable'] += param.numel()
    rows['total'] = dict(
        total=sum(r['total'] for r in rows.values()),
        trainable=sum(r['trainable'] for r in rows.values()))
    return rows


def inspect_config(path: str, cfg_options=None) -> 'OrderedDict[str, dict]':
    cfg = load_config(path, cfg_options=cfg_options, launcher='none')
    return count_parameters(build_meta_model(cfg))


def human(n: int) -> str:
    for unit, size in (('B', 1e9), ('M', 1e6), ('K', 1e3)):
        if n >= size:
            return f'{n / size:.2f}{unit}'
    return str(n)


def format_table(rows) -> str:
    cells = {name: [f'{row[k]:,} ({human(row[k])})'
                    for k in ('total', 'trainable')]
             for name, row in rows.items()}
    widths = [max(len(name) for name in rows)] + [
        max(len(c[i]) for c in cells.values()) for i in (0, 1)]
    header = (f'{"component":<{widths[0]}}  {"total":>{widths[1]}}  '
              f'{"trainable":>{widths[2]}}')
    lines = [header]
    for name, (total, trainable) in cells.items():
        if name == 'total':
            lines.append('-' * len(header))
        lines.append(f'{name:<{widths[0]}}  {total:>{widths[1]}}  '
                     f'{trainable:>{widths[2]}}')
    return '\n'.join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Parameters per component of a config\'s model, built '
        'on the meta device without weights.')
    parser.add_argument('config', help='config file')
    parser.add_argument('--json', action='store_true',
                        help='print JSON instead of a table')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, e.g. '
                        'model.llm.train_mode=lora')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):
        rows = inspect_config(args.config, args.cfg_options)
    if args.json:
        print(json.dumps(dict(config=args.config, parameters=rows), indent=2))
    else:
        print(args.config)
        print(format_table(rows))


if __name__ == '__main__':
    main()
