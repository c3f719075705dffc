"""Parameter counts of a config's model, built on the meta device.

    python tools/inspect_model.py configs/llava/clip_vicuna7b.py [--json]

The model is built from the architecture configs in the config file
(``architecture_only``): no weights are read, nothing is allocated, so a 13B
model takes seconds.  ``pretrained_pth`` is ignored for the same reason.
Prints total and trainable parameters of the vision encoder, the connector,
the LLM, each supervisor (and its parts: UNet, VAE, adapters, ...), and the
whole model.
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

    A supervisor's row also holds ``'parts'``: the same counts per child
    module (e.g. the frozen ``unet`` and the trainable ``adapters``).
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
        counted = [rows.setdefault(_component_of(name, supervisor_names),
                                   dict(total=0, trainable=0))]
        parts = name.split('.')
        if parts[0] == 'supervisors' and len(parts) > 3:
            counted.append(counted[0].setdefault('parts', OrderedDict())
                           .setdefault(parts[2], dict(total=0, trainable=0)))
        for row in counted:
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
    lines = []  # (name, total, trainable); supervisor parts indented
    for name, row in rows.items():
        lines.append((name, row['total'], row['trainable']))
        for part, counts in row.get('parts', {}).items():
            lines.append((f'  .{part}', counts['total'], counts['trainable']))
    cells = [(name, *(f'{n:,} ({human(n)})' for n in counts))
             for name, *counts in lines]
    widths = [max(len(c[i]) for c in cells) for i in range(3)]
    header = (f'{"component":<{widths[0]}}  {"total":>{widths[1]}}  '
              f'{"trainable":>{widths[2]}}')
    out = [header]
    for name, total, trainable in cells:
        if name == 'total':
            out.append('-' * len(header))
        out.append(f'{name:<{widths[0]}}  {total:>{widths[1]}}  '
                   f'{trainable:>{widths[2]}}')
    return '\n'.join(out)


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
