"""Export a trained checkpoint as a transformers LLaVA directory.

The directory loads with no dsvlm code::

    model = LlavaForConditionalGeneration.from_pretrained(OUT_DIR)
    processor = AutoProcessor.from_pretrained(OUT_DIR)

(safetensors weights, ``config.json``, ``generation_config.json``, the
tokenizer with ``<image>``, the image processor and the chat template).
"""
import os
import shutil
import tempfile
from typing import Optional

from mmengine.logging import print_log

from dsvlm.datasets.image_processing import build_image_processor
from dsvlm.datasets.templates import get_template
from dsvlm.models.checkpoint import inference_state_dict, read_state_dict
from dsvlm.registry import MODELS, SCOPE

from .hf_llava import select_strategy, to_hf_llava
from .hf_processor import build_llava_processor

COMPONENTS = ('vision_encoder', 'connector', 'llm')


def build_for_export(cfg, checkpoint: Optional[str]):
    """The model of ``cfg`` (no supervisors) with ``checkpoint`` loaded.

    Weights the checkpoint lacks must come from a component's
    ``pretrained`` directory: a component built from an architecture
    config with random weights that the checkpoint does not hold would be
    exported random, so that is an error."""
    from mmengine.registry import DefaultScope
    model_cfg = dict(cfg.model, supervisors=[], pretrained_pth=None)
    with DefaultScope.overwrite_default_scope(
            cfg.get('default_scope', SCOPE)):
        model = MODELS.build(model_cfg)
    if checkpoint is None:
        return model.eval()
    state = inference_state_dict(read_state_dict(checkpoint))
    own = [name for name, _ in model.named_parameters()]
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in own if k not in state]
    pretrained = _pretrained_parts(cfg)
    random_parts = sorted({k.split('.')[0] for k in missing
                           if k.split('.')[0] not in pretrained})
    if random_parts:
        example = next(k for k in missing if k.split('.')[0] in random_parts)
        raise ValueError(
            f'checkpoint {checkpoint!r} lacks weights of {random_parts} '
            f'(e.g. {example}), which the config builds with random weights '
            '(no `pretrained` directory): the export would not be the '
            'trained model.  Train with model.save_trainable_only=False.')
    if result.unexpected_keys:
        raise ValueError(f'checkpoint {checkpoint!r} has weights the model '
                         f'lacks, e.g. {result.unexpected_keys[:3]}')
    return model.eval()


def _pretrained_parts(cfg) -> set:
    return {name for name in COMPONENTS
            if (cfg.model.get(name) or {}).get('pretrained')}


def image_aspect_ratio(cfg) -> str:
    """The ``image_aspect_ratio`` the model was trained (or tested) with."""
    for loader in ('train_dataloader', 'test_dataloader'):
        dataset = (cfg.get(loader) or {}).get('dataset') or {}
        if 'image_aspect_ratio' in dataset:
            return dataset['image_aspect_ratio']
    return 'pad'  # LlavaDataset's default, LLaVA-1.5's setting


def hf_export(model, image_processor, template, aspect_ratio='pad'):
    """``(LlavaForConditionalGeneration, LlavaProcessor)`` of ``model``."""
    template = get_template(template)
    encoder = model.vision_encoder
    processor, image_token_id = build_llava_processor(
        model.tokenizer, build_image_processor(image_processor), template,
        aspect_ratio, patch_size=encoder.config.patch_size,
        select_strategy=select_strategy(encoder),
        num_additional_tokens=int(encoder.has_cls_token))
    hf = to_hf_llava(model, image_token_id)
    set_generation_config(hf, processor.tokenizer, template, image_token_id,
                          model.generation_cfg)
    return hf, processor


def set_generation_config(hf, tokenizer, template, image_token_id,
                          generation_cfg):
    """Greedy decoding that stops at the template's end of turn (as
    ``LlavaModel.predict``) and never emits the image token."""
    config = hf.generation_config
    stop_ids = tokenizer.encode(template.stop_str, add_special_tokens=False)
    if len(stop_ids) != 1:
        raise ValueError(f'the end of turn {template.stop_str!r} is not one '
                         'token: generation could not stop at it')
    config.eos_token_id = stop_ids[0]
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id = tokenizer.bos_token_id
    config.do_sample = False
    config.suppress_tokens = [image_token_id]
    config.max_new_tokens = generation_cfg.get('max_new_tokens')


def export_to_dir(cfg, checkpoint: Optional[str], out_dir: str) -> str:
    """Write the export of ``checkpoint`` to ``out_dir`` (written in a
    temporary directory next to it and renamed: an existing ``out_dir`` is
    replaced only by a complete export)."""
    model = build_for_export(cfg, checkpoint)
    if model.tokenizer is None or model.image_processor_cfg is None:
        raise ValueError('the config needs `tokenizer` and `image_processor`'
                         ' to export a processor')
    hf, processor = hf_export(model, model.image_processor_cfg,
                              model.template or cfg.get('template'),
                              image_aspect_ratio(cfg))
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.export-', dir=parent)
    try:
        hf.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        if os.path.exists(out_dir):
            old = tempfile.mkdtemp(prefix='.replaced-', dir=parent)
            os.rename(out_dir, os.path.join(old, 'export'))
            os.rename(tmp, out_dir)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    source = checkpoint or "the config's weights"
    print_log(f'Exported {source} to {out_dir}', logger='current')
    return out_dir
