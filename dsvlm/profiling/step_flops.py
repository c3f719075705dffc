"""FLOPs of one training step of a VLM, split by part, counted on the meta
device with ``torch.utils.flop_counter`` (no weights, no compute).

The step and its parts are those of :mod:`.step_parts`: the vision
encoder, the connector, the LLM and each supervisor's adapters, VAE encode,
UNet passes, VAE decode and loss network, each with its forward and its
backward.  ``torch.utils.flop_counter`` counts matrix products,
convolutions and attention, which dominate; elementwise work (noise,
normalisation, the optimizer) is not counted.  Attention is counted as the
fused kernels of a real step run it (their backward recomputes the scores).
"""
import contextlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from .step_parts import PartRecorder, StepShape, llava_step

LLAVA_PARTS = ('vision_encoder', 'connector', 'llm')
# (text tokens, supervised tokens) of a typical sample: a LLaVA-558K caption
# (a BLIP caption of about 12 words) and a LLaVA-665K conversation (a few
# short VQA turns or one longer GPT-4 answer).  Give check_data's median
# with --text-tokens for your own data.
TYPICAL_TEXT_TOKENS = dict(pretrain=(32, 24), instruct=(256, 128))


@dataclass
class PartFlops:
    forward: int = 0
    backward: int = 0

    @property
    def total(self) -> int:
        return self.forward + self.backward


class _FlopMeter:
    """A FLOP counter whose ``value`` is the FLOPs counted inside it."""

    def __enter__(self):
        self.counter = FlopCounterMode(display=False)
        self.counter.__enter__()
        return self

    def __exit__(self, *exc):
        self.counter.__exit__(*exc)
        self.value = self.counter.get_total_flops()


def count_parts(step) -> 'OrderedDict[str, PartFlops]':
    """FLOPs of ``step(part)`` by part: ``step`` calls
    ``part(name, fn)(*args)`` for each part and returns the losses, whose
    backward is counted too (see :class:`.step_parts.PartRecorder`; the
    losses are outputs of parts)."""
    recorder = PartRecorder(_FlopMeter)
    with _fused_attention_on_meta():
        recorder.run(step)
    return OrderedDict(
        (name, PartFlops(int(forward), int(recorder.backward.get(name, 0))))
        for name, forward in recorder.forward.items())


def llava_step_flops(model, shape: StepShape
                     ) -> 'OrderedDict[str, PartFlops]':
    """FLOPs of one training micro-step of ``model`` (a :class:`LlavaModel`
    built on the meta device), by part."""
    return count_parts(llava_step(model, shape, 'meta'))


@contextlib.contextmanager
def _fused_attention_on_meta():
    """On the meta device ``scaled_dot_product_attention`` decomposes into
    matrix products whose backward costs 2x the forward; the fused kernels
    a real step runs (flash, memory-efficient, CPU's) recompute the scores
    in the backward: 2.5x.  Count those: meta attention goes through the
    memory-efficient kernel's op, which has a meta implementation."""
    original = F.scaled_dot_product_attention

    def fused(query, key, value, attn_mask=None, dropout_p=0.0,
              is_causal=False, scale=None, enable_gqa=False):
        if query.device.type != 'meta':
            return original(query, key, value, attn_mask=attn_mask,
                            dropout_p=dropout_p, is_causal=is_causal,
                            scale=scale, enable_gqa=enable_gqa)
        groups = query.shape[-3] // key.shape[-3]
        if groups > 1:  # grouped-query attention: no FLOPs to repeat K/V
            key = key.repeat_interleave(groups, dim=-3)
            value = value.repeat_interleave(groups, dim=-3)
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            attn_mask = torch.zeros(attn_mask.shape, dtype=query.dtype,
                                    device='meta')
        return torch.ops.aten._scaled_dot_product_efficient_attention(
            query, key, value, attn_mask, query.requires_grad or
            key.requires_grad or value.requires_grad, dropout_p, is_causal,
            scale=scale)[0]

    F.scaled_dot_product_attention = fused
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def summarize(parts: 'OrderedDict[str, PartFlops]') -> Dict[str, float]:
    """Totals: the VLM's step, the supervision's, and its overhead."""
    vlm = sum(p.total for n, p in parts.items() if n in LLAVA_PARTS)
    supervision = sum(p.total for n, p in parts.items()
                      if n.startswith('supervisors.'))
    return dict(vlm=vlm, supervision=supervision,
                overhead=supervision / vlm if vlm else float('nan'))


def default_shape(cfg, image_size: int, text_tokens: Optional[int] = None,
                  supervised_tokens: Optional[int] = None) -> StepShape:
    """The config's micro-batch; text lengths default to a typical sample
    of its stage (:data:`TYPICAL_TEXT_TOKENS`)."""
    from dsvlm.engine.config import leaf_datasets
    datasets = list(leaf_datasets(cfg.train_dataloader.dataset))
    template = datasets[0].get('template') or cfg.get('template')
    name = template if isinstance(template, str) else (template or {}).get(
        'name')
    typical = TYPICAL_TEXT_TOKENS['pretrain' if name == 'plain' else
                                  'instruct']
    text = text_tokens or typical[0]
    return StepShape(batch_size=cfg.train_dataloader.batch_size,
                     text_tokens=text,
                     supervised_tokens=min(text, supervised_tokens or
                                           typical[1]),
                     image_size=image_size)
