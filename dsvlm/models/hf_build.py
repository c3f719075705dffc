"""Build a transformers/diffusers module from a local directory or from an
architecture config with random weights.

Every HF component of dsvlm goes through :func:`build_hf_module`, so that the
same config builds

* the real model, from ``pretrained`` (a local directory, never a hub id), and
* the same architecture with random weights, from ``config`` (tests, the tiny
  world, and :func:`architecture_only`, which ``tools/inspect_model.py`` uses
  to build the real configs on the meta device without any weights).

A directory's custom code (``auto_map`` in its ``config.json``) is never
run: the Auto classes get ``trust_remote_code=False`` explicitly (left
unset, transformers would ask on an interactive terminal).
"""
import contextlib
import os
import threading
from typing import Any, Callable, Optional, Union

import torch
from transformers import AutoConfig

_state = threading.local()


@contextlib.contextmanager
def architecture_only():
    """Ignore ``pretrained`` directories: build every HF module from its
    architecture config (random or meta weights)."""
    previous = getattr(_state, 'architecture_only', False)
    _state.architecture_only = True
    try:
        yield
    finally:
        _state.architecture_only = previous


def is_architecture_only() -> bool:
    return getattr(_state, 'architecture_only', False)


def resolve_dtype(dtype: Union[None, str, torch.dtype]) -> Optional[torch.dtype]:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == 'auto':
        return None
    try:
        return getattr(torch, dtype)
    except AttributeError:
        raise ValueError(f'unknown dtype {dtype!r}; use e.g. "float32", '
                         '"bfloat16" or "float16"') from None


def _check_local_dir(pretrained: str, what: str) -> str:
    path = os.path.expanduser(str(pretrained))
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f'{what}: pretrained directory {pretrained!r} does not exist. '
            'dsvlm never downloads weights: put them in a local directory and '
            'set its path in the config (see configs/_base_/paths.py), or '
            'build from an architecture config with `pretrained=None, '
            'config=dict(...)`.')
    return path


def build_hf_config(config: Union[dict, Any], config_builder: Callable,
                    what: str = 'module'):
    """``config`` is an HF config object or a dict of its fields; the dict is
    turned into a config by ``config_builder(**config)``."""
    if isinstance(config, dict):
        built = config_builder(**config)
        check_config_keys(config, built, config_builder, what)
        return built
    return config


def check_config_keys(fields: dict, built, config_builder,
                      what: str = 'config') -> None:
    """Refuse keys of a transformers config dict that the architecture does
    not know: transformers keeps any unknown keyword as an attribute that
    nothing reads, so ``num_hiden_layers=3`` would silently build the
    default depth.  A key is unknown when it survives as a plain attribute
    that a default config of the same type lacks (keys transformers renames
    or converts, such as ``rope_theta`` or ``attn_implementation``, do not
    survive and are fine)."""
    from transformers import PretrainedConfig
    if not isinstance(built, PretrainedConfig):
        return  # diffusers configs are checked by diffusers
    base = {k: fields[k] for k in ('model_type', ) if k in fields}
    known = set(config_builder(**base).to_dict())
    unknown = sorted(k for k in fields
                     if k in built.to_dict() and k not in known)
    if unknown:
        import difflib
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hints.append(f'{key!r}' + (f' (did you mean {close[0]!r}?)'
                                       if close else ''))
        raise ValueError(
            f'{what}.config: unknown key(s) for {type(built).__name__}: '
            f'{", ".join(hints)}')


def build_hf_module(model_cls,
                    pretrained: Optional[str] = None,
                    config: Union[None, dict, Any] = None,
                    config_builder: Optional[Callable] = None,
                    dtype: Union[None, str, torch.dtype] = None,
                    what: str = 'module',
                    **pretrained_kwargs):
    """Build ``model_cls`` from a local directory or an architecture config.

    Args:
        model_cls: a transformers ``PreTrainedModel`` (or diffusers
            ``ModelMixin``) class.
        pretrained: local directory with config and weights.
        config: architecture config (HF config object or dict of its fields).
        config_builder: turns the dict into a config object; defaults to
            ``model_cls.config_class``.
        dtype: parameter dtype.
        what: a name for error messages, e.g. ``'llm'``.
    """
    dtype = resolve_dtype(dtype)
    is_auto = not hasattr(model_cls, 'config_class')  # AutoModelFor... class
    config_cls = AutoConfig if is_auto else model_cls.config_class
    if config_builder is None:
        config_builder = AutoConfig.for_model if is_auto else config_cls
    if pretrained and not is_architecture_only():
        path = _check_local_dir(pretrained, what)
        kwargs = dict(pretrained_kwargs)
        if dtype is not None:
            kwargs['dtype'] = dtype
        if is_auto:
            kwargs.setdefault('trust_remote_code', False)
        return model_cls.from_pretrained(path, local_files_only=True, **kwargs)
    if config is None:
        if pretrained and os.path.isdir(os.path.expanduser(str(pretrained))):
            hf_config = config_cls.from_pretrained(
                os.path.expanduser(str(pretrained)), local_files_only=True,
                **(dict(trust_remote_code=False) if is_auto else {}))
        else:
            raise ValueError(
                f'{what}: needs `pretrained` (a local directory) or `config` '
                '(the architecture) to be built.')
    else:
        hf_config = build_hf_config(config, config_builder, what)
    kwargs = {} if dtype is None else dict(dtype=dtype)
    if is_auto:
        return model_cls.from_config(hf_config, **kwargs)
    return model_cls._from_config(hf_config, **kwargs)
