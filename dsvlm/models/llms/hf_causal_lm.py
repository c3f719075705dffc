"""Any transformers causal LM (Llama/Vicuna, Llama-3, Qwen2, ...)."""
from typing import Optional

import torch
from torch import nn
from transformers import AutoModelForCausalLM

from dsvlm.registry import LLMS
from ..hf_build import build_hf_module
from ..train_mode import apply_train_mode


@LLMS.register_module()
class HFCausalLM(nn.Module):
    """A transformers ``AutoModelForCausalLM``, frozen, full or LoRA.

    Args:
        pretrained: local directory of the LLM.
        config: architecture fields for ``AutoConfig.for_model`` (must hold
            ``model_type``), to build with random weights.
        train_mode: ``'frozen'``, ``'full'`` or ``'lora'``.
        lora_cfg: :class:`peft.LoraConfig` fields.
        gradient_checkpointing: recompute activations in backward.
        attn_implementation: ``'sdpa'``, ``'eager'`` or
            ``'flash_attention_2'``.
    """

    def __init__(self,
                 pretrained: Optional[str] = None,
                 config: Optional[dict] = None,
                 train_mode: str = 'full',
                 lora_cfg: Optional[dict] = None,
                 gradient_checkpointing: bool = False,
                 dtype=None,
                 attn_implementation: Optional[str] = 'sdpa'):
        super().__init__()
        extra = {}
        if attn_implementation:
            extra['attn_implementation'] = attn_implementation
        if config is not None and attn_implementation:
            config = dict(config, attn_implementation=attn_implementation)
        model = build_hf_module(AutoModelForCausalLM, pretrained, config,
                                dtype=dtype, what='llm', **extra)
        self.config = model.config
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs=dict(use_reentrant=False))
            model.config.use_cache = False
        self.train_mode = train_mode
        self.model = apply_train_mode(model, train_mode, lora_cfg,
                                      key='llm.train_mode')

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)

    def forward(self, inputs_embeds, attention_mask, labels=None):
        return self.model(inputs_embeds=inputs_embeds,
                          attention_mask=attention_mask, labels=labels,
                          use_cache=False)

    @torch.no_grad()
    def generate(self, inputs_embeds, attention_mask, **generation_kwargs):
        """Returns only the new token ids (the prompt is given as embeds)."""
        return self.model.generate(inputs_embeds=inputs_embeds,
                                   attention_mask=attention_mask,
                                   **generation_kwargs)
