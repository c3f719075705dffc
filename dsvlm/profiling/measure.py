"""``tools/benchmark.py CONFIG``: build a config's model, optimizer and
training batches, and measure its step with and without its supervisors
(:mod:`.step_timing`)."""
import copy
import statistics
from typing import List

import torch
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from mmengine.runner import Runner

from dsvlm.models.hf_build import architecture_only
from dsvlm.registry import DATASETS, MODELS
from .step_parts import StepShape
from .step_timing import (ab_step_times, data_throughput, summarize_ab,
                          time_parts)


def build_model(cfg, device, random_init: bool):
    """The config's model on ``device``; with ``random_init`` every part
    from its architecture config with random weights (no checkpoint is
    read, ``pretrained_pth`` included)."""
    init_default_scope(cfg.get('default_scope', 'dsvlm'))
    model_cfg = copy.deepcopy(cfg.model)
    if random_init:
        model_cfg['pretrained_pth'] = None
        with torch.device(device), architecture_only():
            return MODELS.build(model_cfg)
    return MODELS.build(model_cfg).to(device)


def training_batches(cfg, count: int) -> List[dict]:
    """The first ``count`` batches of the training dataloader (seed 0)."""
    loader = Runner.build_dataloader(copy.deepcopy(cfg.train_dataloader),
                                     seed=0)
    batches, iterator = [], iter(loader)
    while len(batches) < count:
        try:
            batches.append(next(iterator))
        except StopIteration:  # a short epoch: go round again
            iterator = iter(loader)
    return batches


def spliced_tokens(batch, num_image_tokens: int) -> int:
    """Positions the LLM sees in ``batch``: text tokens plus each image's
    features in place of its image token."""
    inputs = batch['inputs']
    images = int(inputs['has_image'].sum())
    return int(inputs['attention_mask'].sum()) + images * (
        num_image_tokens - 1)


def uncached_dataset(cfg):
    """The training dataset, reading every item from disk (no item
    cache)."""
    ds_cfg = copy.deepcopy(cfg.train_dataloader.dataset)
    if 'cache_items' in ds_cfg:
        ds_cfg['cache_items'] = False
    return DATASETS.build(ds_cfg)


def measure(cfg, steps: int, warmup: int, random_init: bool,
            data_samples: int, hf_reference: bool = True) -> dict:
    """Everything ``tools/benchmark.py`` measures (see its doc)."""
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    torch.manual_seed(0)
    model = build_model(cfg, device, random_init)
    optim_wrapper = build_optim_wrapper(model, copy.deepcopy(
        cfg.optim_wrapper))
    batches = training_batches(cfg, warmup + steps)
    image_tokens = model.num_image_tokens or model.vision_encoder.num_tokens
    tokens = statistics.mean(spliced_tokens(b, image_tokens)
                             for b in batches)
    samples = len(batches[0]['data_samples'])
    ab = summarize_ab(ab_step_times(model, optim_wrapper, batches, warmup,
                                    device), samples, tokens)
    masks = [b['inputs']['attention_mask'] for b in batches]
    text = round(statistics.mean(float(m.sum(1).float().mean())
                                 for m in masks)) - 1
    labels = [b['inputs']['labels'] for b in batches]
    supervised = max(1, round(statistics.mean(
        float((lab != -100).sum(1).float().mean()) for lab in labels)))
    shape = StepShape(batch_size=samples, text_tokens=text,
                      supervised_tokens=min(supervised, text),
                      image_size=model.vision_encoder.image_size)
    parts = time_parts(model, optim_wrapper, shape, device)
    return dict(device=_describe(device), batch_size=samples,
                tokens_per_batch=tokens, ab=ab, parts=parts,
                parts_shape=vars(shape),
                data_samples_per_s=data_throughput(uncached_dataset(cfg),
                                                   data_samples),
                transformers=_reference(model, batches[-1], steps, device)
                if hf_reference else None)


def _reference(model, batch, steps, device):
    """:func:`compare_with_hf`, or why it cannot run for this model."""
    from dsvlm.export.hf_llava import ExportError
    from .hf_reference import compare_with_hf
    try:
        return compare_with_hf(model, batch, min(steps, 5), device)
    except ExportError as e:
        return dict(skipped=str(e))


def _describe(device) -> str:
    if device == 'cuda':
        return torch.cuda.get_device_name()
    import os
    return f'CPU, {torch.get_num_threads()} threads ({os.cpu_count()} cores)'
