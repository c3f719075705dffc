"""Any transformers causal LM (Llama/Vicuna, Llama-3, Qwen2, ...)."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast

from dsvlm.constants import IGNORE_INDEX
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
        supervised_logits_only: in training, apply the LM head only where
            the labels supervise a token, instead of to the whole sequence.
            The loss is the same (the mean next-token cross-entropy over
            supervised tokens, as transformers computes it); the logits of
            a Llama-3 vocabulary for every token are never made.  Models
            that post-process logits (soft-capping, logit scales) need
            ``False``.
    """

    # config fields of models whose logits are more than ``lm_head(hidden)``
    LOGIT_POSTPROCESSING = ('final_logit_softcapping', 'logit_scale',
                            'logits_scaling')

    def __init__(self,
                 pretrained: Optional[str] = None,
                 config: Optional[dict] = None,
                 train_mode: str = 'full',
                 lora_cfg: Optional[dict] = None,
                 gradient_checkpointing: bool = False,
                 dtype=None,
                 attn_implementation: Optional[str] = 'sdpa',
                 supervised_logits_only: bool = True):
        super().__init__()
        extra = {}
        if attn_implementation:
            extra['attn_implementation'] = attn_implementation
        if config is not None and attn_implementation:
            config = dict(config, attn_implementation=attn_implementation)
        model = build_hf_module(AutoModelForCausalLM, pretrained, config,
                                dtype=dtype, what='llm', **extra)
        self.config = model.config
        if supervised_logits_only:
            scaled = [k for k in self.LOGIT_POSTPROCESSING
                      if getattr(model.config, k, None) is not None]
            if scaled:
                raise ValueError(
                    f'{type(model).__name__} post-processes its logits '
                    f'({", ".join(scaled)}); set '
                    'llm.supervised_logits_only=False')
        self.supervised_logits_only = supervised_logits_only
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
        if labels is not None and self.supervised_logits_only:
            return self._supervised_loss(inputs_embeds, attention_mask, labels)
        return self.model(inputs_embeds=inputs_embeds,
                          attention_mask=attention_mask, labels=labels,
                          use_cache=False)

    def _supervised_loss(self, inputs_embeds, attention_mask, labels):
        """Next-token loss from the LM head at supervised positions only;
        ``logits`` holds those positions' logits, in sequence order."""
        hidden = self.model.get_decoder()(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask,
            use_cache=False).last_hidden_state
        targets = labels[:, 1:]
        supervised = targets != IGNORE_INDEX
        lm_head = self.model.get_output_embeddings()
        logits = lm_head(hidden[:, :-1][supervised])
        if logits.shape[0]:
            loss = F.cross_entropy(logits.float(), targets[supervised])
        else:  # nothing supervised: a zero whose graph still holds every
            # parameter (DDP expects a gradient for each)
            loss = lm_head(hidden[:1, :1]).sum() * 0.
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    @torch.no_grad()
    def generate(self, inputs_embeds, attention_mask, **generation_kwargs):
        """Returns only the new token ids (the prompt is given as embeds).

        With several processes every rank keeps stepping until all have
        finished (``synced_gpus``): under a sharded engine each step
        gathers parameters on every rank, and transformers only detects
        DeepSpeed ZeRO-3 and its own FSDP set-up by itself.
        """
        generation_kwargs.setdefault('synced_gpus', _world_size() > 1)
        return self.model.generate(inputs_embeds=inputs_embeds,
                                   attention_mask=attention_mask,
                                   **generation_kwargs)


def _world_size() -> int:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1
