"""An optimizer over the trainable parameters only, in few parameter groups.

MMEngine's ``DefaultOptimWrapperConstructor`` hands the optimizer every
parameter when there is no ``paramwise_cfg`` (frozen ones too), and one
parameter group per parameter when there is.  Sharded engines pay for both:
DeepSpeed ZeRO partitions and flattens each group separately (hundreds of
groups for a 7B LLM), and keeps optimizer buffers for whatever it is given.
"""
import logging
from typing import Dict, List, Tuple

from mmengine.logging import MMLogger
from mmengine.optim import DefaultOptimWrapperConstructor
from torch import nn

from dsvlm.registry import OPTIM_WRAPPER_CONSTRUCTORS


def merge_param_groups(groups: List[dict]) -> List[dict]:
    """Merge groups whose settings (everything but ``params``) are equal,
    keeping the order in which each setting first appears.  A parameter
    listed twice (a tied embedding and LM head: MMEngine lists it under both
    modules) is kept once, in its first group."""
    merged: Dict[Tuple, dict] = {}
    seen = set()
    for group in groups:
        settings = tuple(sorted((k, repr(v)) for k, v in group.items()
                                if k != 'params'))
        target = merged.setdefault(
            settings, dict({k: v for k, v in group.items() if k != 'params'},
                           params=[]))
        for param in group['params']:
            if id(param) not in seen:
                seen.add(id(param))
                target['params'].append(param)
    return [g for g in merged.values() if g['params']]


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class TrainableOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``DefaultOptimWrapperConstructor`` that gives the optimizer only the
    parameters with ``requires_grad``, with ``paramwise_cfg`` (``lr_mult``,
    ``decay_mult`` per ``custom_keys``) applied and equal settings merged
    into one group each.  With ``clip_grad=dict(..., per_part=True)`` each
    group also says which part of the model its parameters belong to
    (``clip_part``: ``vision_encoder``, ``llm``, ``supervisors``...), which
    the optimizer wrapper clips separately.

    Use: ``optim_wrapper = dict(constructor='TrainableOptimWrapperConstructor',
    ...)``; ``dsvlm.engine.config.complete_config`` sets it for the sharded
    strategies.
    """

    def add_params(self, params: List[dict], module: nn.Module,
                   prefix: str = '', is_dcn_module=None) -> None:
        if not any(p.requires_grad for p in module.parameters()):
            return  # a frozen subtree (the LLM, the UNet): nothing to add
        groups: List[dict] = []
        super().add_params(groups, module, prefix, is_dcn_module)
        if self.clip_per_part:  # innermost call first: its own prefix
            for group in groups:
                group.setdefault('clip_part', prefix.split('.')[0])
        params.extend(merge_param_groups(groups))

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg=None):
        # an empty paramwise_cfg would make the parent pass
        # model.parameters(), frozen ones included; go through add_params
        super().__init__(optim_wrapper_cfg,
                         paramwise_cfg or dict(custom_keys={}))
        self.clip_per_part = bool(
            (optim_wrapper_cfg.get('clip_grad') or {}).get('per_part'))

    def __call__(self, model: nn.Module):
        # the parent logs a warning per frozen parameter it skips (thousands
        # for a frozen LLM under LoRA); skipping them is the point here
        logger = MMLogger.get_current_instance()
        quiet = _DropMessages('is skipped since its requires_grad')
        logger.addFilter(quiet)
        try:
            return super().__call__(model)
        finally:
            logger.removeFilter(quiet)


class _DropMessages(logging.Filter):

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()
