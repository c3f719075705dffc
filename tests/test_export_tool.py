"""tools/export_hf.py on the tiny configs (LLaVA, DS-VLM, LoRA), and what
the transformers LLaVA format cannot express."""
import pytest
import torch
from mmengine.config import DictAction
from mmengine.registry import init_default_scope
from PIL import Image
from safetensors import safe_open
from transformers import AutoProcessor, LlavaForConditionalGeneration

from dsvlm.datasets.collate import llava_collate
from dsvlm.engine import load_config
from dsvlm.export import ExportError, build_for_export, hf_export
from dsvlm.registry import DATASETS, MODELS
from model_factory import tiny_vlm_cfg
from test_export_parity import assert_parity
from test_tiny_world_training import world_options
from tool_loader import load_tool

init_default_scope('dsvlm')
export_tool = load_tool('export_hf')


def _options(data_root, **extra):
    """The command line's ``--cfg-options`` of a one-iteration tiny world,
    as strings (``cli``) or parsed as the command line parses them."""
    options = dict(o.split('=', 1) for o in world_options(data_root, 1))
    return options | extra


def _parsed(options):
    return {k: DictAction._parse_iterable(v) if isinstance(v, str) else v
            for k, v in options.items()}


def _checkpoint(cfg, path):
    """A checkpoint as the Runner writes it, of the config's model with
    every trainable weight moved off its initial value (LoRA's B starts at
    zero, which would hide a missing merge)."""
    torch.manual_seed(1)
    model = MODELS.build(cfg.model)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
    torch.save(dict(state_dict=model.state_dict(), meta=dict()), path)
    return model


def _load_tiny(config, data_root, **extra):
    return load_config(config, _parsed(_options(data_root, **extra)),
                       launcher='none')


@pytest.mark.parametrize('config,extra', [
    ('configs/tiny/llava_tiny.py', {}),
    ('configs/tiny/dsvlm_tiny.py', {}),
    ('configs/tiny/llava_tiny_lora.py', {'model.pretrained_pth': None}),
])
def test_tiny_config_exports_with_parity(config, extra, tmp_path):
    data_root = tmp_path / 'world'
    cfg = _load_tiny(config, data_root, **extra)
    trained = _checkpoint(cfg, tmp_path / 'iter_1.pth')
    out = tmp_path / 'export'
    export_tool.main([config, str(tmp_path / 'iter_1.pth'), str(out),
                      '--cfg-options', *[f'{k}={v}' for k, v in
                                         _options(data_root, **extra).items()]])

    with safe_open(out / 'model.safetensors', 'pt') as f:
        keys = list(f.keys())
    assert not [k for k in keys if 'lora' in k or 'supervisor' in k
                or 'unet' in k or 'vae' in k]
    hf = LlavaForConditionalGeneration.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)

    # the reference: the checkpoint loaded into the config's model, as
    # tools/test.py evaluates it (LoRA unmerged, no supervisors)
    model = build_for_export(cfg, str(tmp_path / 'iter_1.pth'))
    if 'dsvlm' in config:  # the supervisors trained, and are not exported
        assert len(trained.supervisors) and not len(model.supervisors)
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    item = dataset[0]
    batch = llava_collate([item], pad_token_id=model.tokenizer.pad_token_id)
    image = Image.open(item['data_sample']['image']).convert('RGB')
    # the dataset's own question text (<image> inline) as string content
    record = dataset._samples[0][0]
    prompt = processor.apply_chat_template(
        [dict(role='user', content=record['conversations'][0]['value'])],
        add_generation_prompt=True)
    assert_parity(model, batch, hf, processor, image, prompt)


def test_export_in_bfloat16(tmp_path):
    """--dtype: the export's weights and config in bfloat16."""
    data_root = tmp_path / 'world'
    cfg = _load_tiny('configs/tiny/llava_tiny.py', data_root)
    trained = _checkpoint(cfg, tmp_path / 'ckpt.pth')
    out = tmp_path / 'export'
    export_tool.main(['configs/tiny/llava_tiny.py', str(tmp_path / 'ckpt.pth'),
                      str(out), '--dtype', 'bfloat16', '--cfg-options',
                      *[f'{k}={v}' for k, v in _options(data_root).items()]])
    hf = LlavaForConditionalGeneration.from_pretrained(out, dtype='auto')
    assert {p.dtype for p in hf.parameters()} == {torch.bfloat16}
    projector = trained.connector.layers[0].weight
    torch.testing.assert_close(
        hf.model.multi_modal_projector.linear_1.weight,
        projector.to(torch.bfloat16))


def test_random_frozen_weights_missing_from_checkpoint_fail(tmp_path):
    """A frozen part built from random weights is not in a trainable-only
    checkpoint: exporting it would ship random weights."""
    cfg = _load_tiny('configs/tiny/llava_tiny.py', tmp_path / 'world',
                     **{'model.vision_encoder.train_mode': 'frozen'})
    _checkpoint(cfg, tmp_path / 'ckpt.pth')
    with pytest.raises(ValueError, match=r"vision_encoder.*random weights"):
        build_for_export(cfg, str(tmp_path / 'ckpt.pth'))


def test_what_the_format_cannot_express_fails(test_tokenizer):
    cfg = tiny_vlm_cfg(tokenizer=test_tokenizer, template='vicuna_v1',
                       connector=dict(type='LinearConnector'))
    model = MODELS.build(cfg)
    with pytest.raises(ExportError, match='two-layer MLP'):
        hf_export(model, cfg['image_processor'], 'vicuna_v1')
    model = MODELS.build(tiny_vlm_cfg(tokenizer=test_tokenizer))
    with pytest.raises(ValueError, match="'plain' template.*not a chat"):
        hf_export(model, cfg['image_processor'], 'plain')


def test_failed_export_keeps_the_previous_one(tmp_path, monkeypatch):
    """OUT_DIR is replaced only by a complete export: a failure after the
    weights were written leaves the previous export and no partial one."""
    from transformers import LlavaProcessor

    def fail(*args, **kwargs):
        raise OSError('disk full')

    monkeypatch.setattr(LlavaProcessor, 'save_pretrained', fail)
    data_root = tmp_path / 'world'
    cfg = _load_tiny('configs/tiny/llava_tiny.py', data_root)
    _checkpoint(cfg, tmp_path / 'ckpt.pth')
    out = tmp_path / 'export'
    out.mkdir()
    (out / 'config.json').write_text('{"previous": true}')
    options = [f'{k}={v}' for k, v in _options(data_root).items()]
    with pytest.raises(OSError, match='disk full'):
        export_tool.main(['configs/tiny/llava_tiny.py',
                          str(tmp_path / 'ckpt.pth'), str(out),
                          '--cfg-options', *options])
    assert [p.name for p in out.iterdir()] == ['config.json']
    assert (out / 'config.json').read_text() == '{"previous": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        'ckpt.pth', 'export', 'world']
