"""A config's model on the meta device: its architecture at real size, no
weights read, nothing allocated."""
import torch
from mmengine.registry import init_default_scope

from dsvlm.models.hf_build import architecture_only
from dsvlm.registry import MODELS


def build_meta_model(cfg):
    """The config's model on the meta device, without weights, tokenizer
    or ``pretrained_pth``."""
    init_default_scope(cfg.get('default_scope', 'dsvlm'))
    model_cfg = cfg.model.copy()
    model_cfg.update(tokenizer=None, pretrained_pth=None)
    with torch.device('meta'), architecture_only():
        return MODELS.build(model_cfg)
