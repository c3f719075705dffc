"""Build a component from the FUNCTIONS registry once per config."""
import json

from dsvlm.registry import FUNCTIONS


def build_cached(cfg, cache: dict, what: str):
    """``cfg`` built through FUNCTIONS; the same config gives the same object.

    ``cfg`` is a dict with ``type`` (a FUNCTIONS name or a function);
    anything else is taken to be an already built ``what`` and returned
    as is.
    """
    if not hasattr(cfg, 'get') or 'type' not in cfg:
        return cfg
    cfg = cfg.to_dict() if hasattr(cfg, 'to_dict') else dict(cfg)
    key = json.dumps(cfg, sort_keys=True, default=repr)
    if key not in cache:
        cache[key] = FUNCTIONS.build(cfg)
        if cache[key] is None:
            raise ValueError(f'{what} config {cfg} built None')
    return cache[key]
