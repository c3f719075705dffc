"""Tokenizers built from configs (shared by the data pipeline and the model).

A config is a tokenizer instance (used as is) or ``dict(type=NAME, ...)``
with a FUNCTIONS name, e.g. ``dict(type='pretrained_tokenizer',
path='checkpoints/vicuna-7b-v1.5')``.  The same config always gives the same
tokenizer object, so data and model agree on it.
"""
import os.path as osp

from dsvlm.registry import FUNCTIONS

from ._cache import build_cached

_TOKENIZERS: dict = {}


def build_tokenizer(cfg):
    """The tokenizer of ``cfg``, with a pad token (unk or eos if it had
    none)."""
    tokenizer = build_cached(cfg, _TOKENIZERS, 'tokenizer')
    ensure_pad_token(tokenizer)
    return tokenizer


def ensure_pad_token(tokenizer):
    if getattr(tokenizer, 'pad_token', None) is None:
        fallback = tokenizer.unk_token or tokenizer.eos_token
        if fallback is None:
            raise ValueError(f'{type(tokenizer).__name__} has no pad, unk or '
                             'eos token to pad with')
        tokenizer.pad_token = fallback
    return tokenizer


@FUNCTIONS.register_module()
def pretrained_tokenizer(path, **kwargs):
    """``AutoTokenizer.from_pretrained(path)`` from a local directory only."""
    from transformers import AutoTokenizer
    if not osp.isdir(path):
        raise FileNotFoundError(
            f'tokenizer directory not found: {path} (set it in the config or '
            'with --cfg-options tokenizer.path=DIR)')
    kwargs.setdefault('local_files_only', True)
    # a directory's custom code runs only if the config asks for it
    kwargs.setdefault('trust_remote_code', False)
    return AutoTokenizer.from_pretrained(path, **kwargs)
