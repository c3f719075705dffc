"""Greedy answer generation settings and decoding for ``predict``."""
from typing import List, Optional

import torch


def _stop_str(template) -> Optional[str]:
    if template is None:
        return None
    from dsvlm.datasets.templates import get_template
    return get_template(template).stop_str


def generation_kwargs(tokenizer, template,
                      generation_cfg: dict) -> dict:
    """Greedy decoding that stops at the template's end-of-turn string."""
    kwargs = dict(do_sample=False, pad_token_id=tokenizer.pad_token_id)
    stop = _stop_str(template)
    stop_ids = tokenizer.encode(stop, add_special_tokens=False) \
        if stop else []
    if len(stop_ids) == 1:
        kwargs['eos_token_id'] = stop_ids[0]
    elif stop:
        kwargs.update(stop_strings=[stop], tokenizer=tokenizer,
                      eos_token_id=tokenizer.eos_token_id)
    else:
        kwargs['eos_token_id'] = tokenizer.eos_token_id
    kwargs.update(generation_cfg)
    return kwargs


def decode_answers(tokenizer, token_ids: torch.Tensor,
                   template) -> List[str]:
    """Decode generated ids and cut each at the end-of-turn string."""
    stop = _stop_str(template)
    answers = []
    for text in tokenizer.batch_decode(token_ids, skip_special_tokens=False):
        if stop and stop in text:
            text = text[:text.index(stop)]
        for special in (tokenizer.pad_token, tokenizer.eos_token):
            if special:
                text = text.replace(special, '')
        answers.append(text.strip())
    return answers
