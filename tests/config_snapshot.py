"""Resolved configs as flat ``{dotted.key: value}`` dicts, for comparing a
config tree before and after a refactoring.

``python tests/config_snapshot.py OUT.json`` writes the resolved configs of
every leaf under ``configs/`` except the ablations (``configs/dsvlm/
ablations/`` rows are compared with their Table-1 model instead, in
tests/test_dsvlm_configs.py).  Paths resolve with fixed environment
variables, so the snapshot does not depend on the machine.
"""
import glob
import json
import os
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = osp.join(ROOT, 'configs')
ENV = dict(DSVLM_CHECKPOINTS='/ckpt', DSVLM_DATA='/data', WORLD_SIZE='8')


def leaf_configs():
    """Names (path under configs/ without .py) of the compared leaves."""
    names = []
    for path in glob.glob(osp.join(CONFIGS, '**', '*.py'), recursive=True):
        name = osp.relpath(path, CONFIGS)[:-3]
        if name.startswith('_base_') or name.startswith('dsvlm/ablations'):
            continue
        names.append(name)
    return sorted(names)


def flatten(value, prefix=''):
    """``{'a.b.0.c': leaf}`` of nested dicts and lists (tuples as lists)."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)) and any(
            isinstance(v, (dict, list, tuple)) for v in value):
        items = enumerate(value)
    else:
        return {prefix[:-1]: list(value) if isinstance(value, tuple)
                else value}
    flat = {}
    for key, item in items:
        flat.update(flatten(item, f'{prefix}{key}.'))
    if not flat and prefix:
        flat[prefix[:-1]] = {} if isinstance(value, dict) else []
    return flat


def resolve(name):
    """The flat resolved config of ``configs/<name>.py`` (load_config, with
    completion, for 8 processes)."""
    from dsvlm.engine.config import load_config
    saved = {k: os.environ.get(k) for k in ENV}
    os.environ.update(ENV)
    try:
        cfg = load_config(osp.join(CONFIGS, name + '.py'))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    flat = flatten(cfg.to_dict())
    return {k: v for k, v in flat.items() if k != 'filename'}


if __name__ == '__main__':
    snapshot = {name: resolve(name) for name in leaf_configs()}
    with open(sys.argv[1], 'w') as f:
        json.dump(snapshot, f, indent=0, sort_keys=True)
        f.write('\n')
    print(f'{len(snapshot)} configs -> {sys.argv[1]}')
