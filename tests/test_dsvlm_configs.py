"""The DS-VLM configs: each Table-1 leaf is its LLaVA config plus the SD-1.5
diffusion supervisor (and the encoder trained), each ablation row differs
from the Table-1 model of its table in exactly its setting, in both stages,
and the supervisor builds on the meta device with the published SD-1.5
sizes.

Reference counts are published figures (SD-1.5 UNet 859.52M, VAE 83.65M,
VGG-16 convolutions 14.71M) and closed-form formulas over the architecture
written out here, never read from the configs or the code under test.
"""
import ast
import glob
import os.path as osp

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from mmengine.registry import init_default_scope

from dsvlm.engine.config import load_config
from dsvlm.models.hf_build import architecture_only
from dsvlm.registry import SUPERVISORS
from tool_loader import load_tool

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = osp.join(ROOT, 'configs')
PAIRS = ('clip_vicuna7b', 'clip_vicuna13b', 'clip_llama3_8b', 'clip_qwen2_7b',
         'siglip_vicuna7b', 'clip_vicuna7b_mgm')
LEAVES = sorted([f'{p}_pretrain' for p in PAIRS] + list(PAIRS))
MISSING = '<missing>'
LEVELS = ('low', 'mid', 'high')
CLIP_LEVELS = dict(low=8, mid=16, high=24)  # the paper's layers of CLIP-L

# Each ablation row: (Table-1 model it changes, change in both stages):
# `supervisor` keys replaced in model.supervisors[0], other flattened keys.
ROWS = {
    'table3/ts_only': ('clip_vicuna13b', dict(supervisor=dict(
        image_layers=()))),
    'table3/is_high': ('clip_vicuna13b', dict(supervisor=dict(
        text_feature=False, image_layers=('high', )))),
    'table3/is_high_mid': ('clip_vicuna13b', dict(supervisor=dict(
        text_feature=False, image_layers=('mid', 'high')))),
    'table3/is_all': ('clip_vicuna13b', dict(supervisor=dict(
        text_feature=False))),
    'table4/mae': ('clip_vicuna7b', dict(supervisor=dict(
        loss=dict(type='L1ReconLoss')))),
    'table4/ssim': ('clip_vicuna7b', dict(supervisor=dict(
        loss=dict(type='SSIMReconLoss')))),
    'table5/sca': ('clip_vicuna13b', dict(supervisor=dict(
        cross_attention='shared'))),
    'table6/qformer': ('clip_vicuna13b', dict(supervisor=dict(adapter=dict(
        type='qformer', num_queries=32, depth=2, num_heads=8)))),
    'table9/frozen_encoder': ('clip_vicuna7b', dict(keys={
        'model.vision_encoder.train_mode': 'frozen'})),
    'ddim50/clip_vicuna7b': ('clip_vicuna7b', dict(supervisor=dict(
        sampling_steps=50, timestep_range=(49, 1000),
        gradient_checkpointing=True), keys={
            'train_dataloader.batch_size': 8})),
}
# Table 7: LLaVA-1.5 with the encoder trained as DS-VLM trains it
TABLE7 = {'table7/llava_clip_vicuna7b': 'clip_vicuna7b',
          'table7/llava_siglip_vicuna7b': 'siglip_vicuna7b'}
STAGES = ('_pretrain', '')
ALL_CONFIGS = sorted(
    [f'dsvlm/{n}' for n in LEAVES + ['clip_vicuna7b_lora']] +
    [f'dsvlm/ablations/{r}{s}' for r in list(ROWS) + list(TABLE7)
     for s in STAGES])
# what the meta builds cover: every Table-1 model and one row per table
META_BUILDS = sorted(
    [f'dsvlm/{n}' for n in LEAVES + ['clip_vicuna7b_lora']] +
    [f'dsvlm/ablations/{r}' for r in (
        'table3/is_high_pretrain', 'table4/mae', 'table5/sca_pretrain',
        'table6/qformer', 'table7/llava_siglip_vicuna7b',
        'table9/frozen_encoder_pretrain', 'ddim50/clip_vicuna7b')])

# --------------------------------------------------------------- reference
# SD-1.5 (runwayml/stable-diffusion-v1-5 unet/ and vae/ config.json).
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=[320, 640, 1280, 1280], cross_attention_dim=768,
    attention_head_dim=8,
    down_block_types=['CrossAttnDownBlock2D'] * 3 + ['DownBlock2D'],
    up_block_types=['UpBlock2D'] + ['CrossAttnUpBlock2D'] * 3)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    block_out_channels=[128, 256, 512, 512], sample_size=512,
    down_block_types=['DownEncoderBlock2D'] * 4,
    up_block_types=['UpDecoderBlock2D'] * 4, scaling_factor=0.18215)
UNET_PARAMS = 859_520_964  # SD-1.5 UNet, "859.52M"
VAE_PARAMS = 83_653_863  # SD-1.5 VAE (kl-f8), "83.65M"
VGG16_CONV_PARAMS = 14_714_688  # torchvision vgg16().features
LPIPS_HEADS = 64 + 128 + 256 + 512 + 512  # 1x1 convs, no bias
# inner width of the 16 cross-attention layers: down 2x320, 2x640, 2x1280;
# mid 1280; up 3x1280, 3x640, 3x320
ATTN2_WIDTHS = [320] * 2 + [640] * 2 + [1280] * 2 + [1280] + \
    [1280] * 3 + [640] * 3 + [320] * 3
WIDTH = 768  # SD-1.5 cross-attention width
CLIP = dict(dim=1024, layers=24)
SIGLIP = dict(dim=1152, layers=27)
LLM_WIDTH = dict(vicuna7b=4096, vicuna13b=5120, llama3_8b=4096,
                 qwen2_7b=3584)


def mlp_adapter(in_dim):
    return 2 * in_dim + in_dim * WIDTH + WIDTH  # LayerNorm + Linear


def qformer_adapter(in_dim, queries=32, depth=2, d=WIDTH):
    attention = 3 * d * d + 3 * d + d * d + d  # in_proj + out_proj
    layer = 2 * attention + (d * 4 * d + 4 * d) + (4 * d * d + d) + 3 * 2 * d
    return queries * d + (in_dim * d + d) + depth * layer + (d * d + d)


def moe(image_branches, text_branch=True):
    """New K/V (no bias) per image branch and a router per layer."""
    branches = image_branches + int(text_branch)
    kv = sum(2 * WIDTH * d for d in ATTN2_WIDTHS) * image_branches
    router = sum(d * branches for d in ATTN2_WIDTHS) if branches > 1 else 0
    return kv + router


# ----------------------------------------------------------------- helpers
def path(name):
    return osp.join(CONFIGS, name + '.py')


def load(name):
    return load_config(path(name), launcher='none')


def flatten(value, prefix=''):
    if isinstance(value, dict) and value:
        out = {}
        for key, item in value.items():
            out.update(flatten(item, f'{prefix}{key}.'))
        return out
    if isinstance(value, list) and value:
        out = {}
        for index, item in enumerate(value):
            out.update(flatten(item, f'{prefix}{index}.'))
        return out
    return {prefix[:-1]: value}


# follows the work_dir (dsvlm.engine.config.set_bad_sample_records)
RECORD_FILE = 'train_dataloader.dataset.bad_samples.record_file'


def differences(cfg, reference):
    a, b = flatten(cfg.to_dict()), flatten(reference.to_dict())
    for flat, config in ((a, cfg), (b, reference)):
        if flat.get(RECORD_FILE) == osp.join(config.work_dir,
                                             'bad_samples.jsonl'):
            del flat[RECORD_FILE]
    return {k: a.get(k, MISSING) for k in set(a) | set(b)
            if a.get(k, MISSING) != b.get(k, MISSING)}


def to_lists(value):
    if isinstance(value, dict):
        return {k: to_lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_lists(v) for v in value]
    return value


inspect_model = load_tool('inspect_model')


def count(module, trainable=None):
    return sum(p.numel() for p in module.parameters()
               if trainable is None or p.requires_grad == trainable)


# ------------------------------------------------------------------- tests
def test_every_table1_row_and_ablation_has_a_config():
    found = sorted(
        osp.relpath(p, CONFIGS)[:-3]
        for p in glob.glob(osp.join(CONFIGS, 'dsvlm', '**', '*.py'),
                           recursive=True))
    assert found == ALL_CONFIGS
    llava = sorted(osp.basename(p)[:-3]
                   for p in glob.glob(osp.join(CONFIGS, 'llava', '*.py')))
    assert set(LEAVES) <= set(llava)


@pytest.mark.parametrize('name', META_BUILDS)
def test_config_loads_and_builds_on_meta(name):
    """What ``tools/inspect_model.py CONFIG`` does."""
    rows = inspect_model.inspect_config(path(name))
    supervisor = rows.get('supervisors.0 (DiffusionSupervisor)')
    if '/table7/' in name:
        assert supervisor is None
    else:  # SD-1.5's UNet, frozen
        assert supervisor['total'] - supervisor['trainable'] > UNET_PARAMS
        assert rows['total']['total'] > 7e9


@pytest.mark.parametrize('name', sorted(set(ALL_CONFIGS) - set(META_BUILDS)))
def test_config_loads(name):
    cfg = load(name)
    assert cfg.model.type == 'LlavaModel'
    assert cfg.work_dir == f'work_dirs/{name}'


def test_base_carries_the_sd15_architecture():
    sup = load('dsvlm/clip_vicuna7b').diffusion_supervisor
    assert to_lists(sup.unet) == SD15_UNET
    assert to_lists(sup.vae) == SD15_VAE


def test_dsvlm_leaves_show_only_what_differs():
    """A DS-VLM leaf is its bases plus at most three statements."""
    for name in LEAVES + ['clip_vicuna7b_lora']:
        with open(path(f'dsvlm/{name}')) as f:
            tree = ast.parse(f.read())
        targets = [node.targets[0].id for node in tree.body
                   if isinstance(node, ast.Assign)]
        assert targets[0] == '_base_' and len(targets) <= 4, name
        assert set(targets[1:]) <= {'model', 'train_dataloader'}, name


@pytest.mark.parametrize('name', LEAVES)
def test_leaf_is_llava_plus_the_supervisor(name, monkeypatch):
    monkeypatch.setenv('DSVLM_CHECKPOINTS', '/ckpt')
    cfg, llava = load(f'dsvlm/{name}'), load(f'llava/{name}')
    stage1 = name.endswith('_pretrain')
    pair = name.replace('_pretrain', '')
    siglip = pair.startswith('siglip')
    sup = cfg.model.supervisors
    assert len(sup) == 1 and sup[0] == cfg.diffusion_supervisor
    sup = sup[0]
    assert sup.type == 'DiffusionSupervisor'
    assert sup.pretrained == '/ckpt/stable-diffusion-v1-5'
    assert sup.text_feature is True
    assert tuple(sup.image_layers) == LEVELS  # the encoder's, by name
    assert cfg.model.vision_encoder.get('feature_levels') == (
        dict(low=9, mid=18, high=26) if siglip else None)  # CLIP: thirds
    assert sup.cross_attention == 'moe' and sup.adapter == dict(type='mlp')
    assert sup.loss == dict(type='PerceptualReconLoss',
                            vgg_checkpoint='/ckpt/vgg16-397923af.pth')
    assert sup.image_size == 256 and sup.sampling_steps == 1
    assert sup.unet_train_mode == sup.vae_train_mode == 'frozen'
    # the image normalisation comes from the model's image processor
    assert 'image_mean' not in sup and 'image_std' not in sup
    # everything else is the LLaVA config, but what DS-VLM trains
    stage2_changes = {} if stage1 else {
        'model.pretrained_pth': f'work_dirs/dsvlm/{pair}_pretrain'}
    # a smaller per-GPU batch where the supervisor's activations need it
    # (the memory plan), with the same global batch through accumulation
    batch = cfg.train_dataloader.batch_size
    if batch != llava.train_dataloader.batch_size:
        assert batch in (8, 16)
        assert batch * cfg.strategy.gradient_accumulation_steps == \
            cfg.global_batch_size == llava.global_batch_size
        stage2_changes.update({
            'train_dataloader.batch_size': batch,
            'strategy.train_micro_batch_size_per_gpu': batch,
            'strategy.gradient_accumulation_steps':
            cfg.global_batch_size // batch})
        if 'batch_size' in cfg.train_dataloader.sampler:
            stage2_changes['train_dataloader.sampler.batch_size'] = batch
    lr_mult = 0.02 if stage1 else 0.1
    assert {k: v for k, v in differences(cfg, llava).items()
            if not k.startswith(('model.supervisors', 'diffusion_supervisor'))
            } == {
        'model.vision_encoder.train_mode': 'full',
        'optim_wrapper.paramwise_cfg.custom_keys.vision_encoder.lr_mult':
        lr_mult,
        'find_unused_parameters': True,
        'custom_hooks.0.type': 'ReconVisualizationHook',
        'custom_hooks.0.interval': 500,
        'work_dir': f'work_dirs/dsvlm/{name}',
        **stage2_changes}
    encoder_lr = cfg.optim_wrapper.optimizer.lr * lr_mult
    assert encoder_lr == pytest.approx(2e-5 if stage1 else 2e-6)
    if not stage1:  # stage 2 reads the DS-VLM stage-1 run's work_dir
        assert load(f'dsvlm/{pair}_pretrain').work_dir == \
            cfg.model.pretrained_pth


def test_lora_leaf_is_dsvlm_stage2_with_rank_8_lora():
    cfg, full = load('dsvlm/clip_vicuna7b_lora'), load('dsvlm/clip_vicuna7b')
    assert differences(cfg, full) == {
        'model.llm.train_mode': 'lora',
        'model.llm.lora_cfg.r': 8,
        'model.llm.lora_cfg.lora_alpha': 16,
        'model.llm.lora_cfg.lora_dropout': 0.05,
        'model.llm.lora_cfg.target_modules': 'all-linear',
        'model.llm.lora_cfg.bias': 'none',
        'optim_wrapper.optimizer.lr': 2e-4,
        'optim_wrapper.paramwise_cfg.custom_keys.connector.lr_mult': 0.1,
        'optim_wrapper.paramwise_cfg.custom_keys.vision_encoder.lr_mult':
        0.01,
        'work_dir': 'work_dirs/dsvlm/clip_vicuna7b_lora'}
    custom = cfg.optim_wrapper.paramwise_cfg.custom_keys
    lr = cfg.optim_wrapper.optimizer.lr
    assert lr * custom.connector.lr_mult == pytest.approx(2e-5)
    assert lr * custom.vision_encoder.lr_mult == pytest.approx(2e-6)


@pytest.mark.parametrize('stage', STAGES)
@pytest.mark.parametrize('row', sorted(ROWS))
def test_ablation_row_changes_exactly_its_setting_in_both_stages(row, stage):
    """Each row is the Table-1 model of its table, changed in one setting,
    in stage 1 and in stage 2; stage 2 starts from the row's own stage 1."""
    base, change = ROWS[row]
    cfg, default = load(f'dsvlm/ablations/{row}{stage}'), load(
        f'dsvlm/{base}{stage}')
    expected_sup = dict(default.model.supervisors[0].to_dict(),
                        **change.get('supervisor', {}))
    assert [to_lists(s.to_dict()) for s in cfg.model.supervisors] == [
        to_lists(expected_sup)]
    expected = dict(change.get('keys', {}),
                    work_dir=f'work_dirs/dsvlm/ablations/{row}{stage}')
    batch = expected.get('train_dataloader.batch_size')
    if batch is not None:  # the global batch stays
        expected.update({
            'strategy.train_micro_batch_size_per_gpu': batch,
            'strategy.gradient_accumulation_steps':
            default.global_batch_size // batch})
        if 'batch_size' in cfg.train_dataloader.sampler:
            expected['train_dataloader.sampler.batch_size'] = batch
    if not stage:
        expected['model.pretrained_pth'] = load(
            f'dsvlm/ablations/{row}_pretrain').work_dir
    other = {k: v for k, v in differences(cfg, default).items()
             if not k.startswith('model.supervisors')}
    assert other == expected


@pytest.mark.parametrize('stage', STAGES)
@pytest.mark.parametrize('row', sorted(TABLE7))
def test_table7_is_llava_with_the_encoder_trained_as_dsvlm_trains_it(
        row, stage):
    cfg = load(f'dsvlm/ablations/{row}{stage}')
    llava = load(f'llava/{TABLE7[row]}{stage}')
    dsvlm = load(f'dsvlm/{TABLE7[row]}{stage}')
    expected = {
        'model.vision_encoder.train_mode': 'full',
        'optim_wrapper.paramwise_cfg.custom_keys.vision_encoder.lr_mult':
        0.02 if stage else 0.1,
        'find_unused_parameters': True,
        'work_dir': f'work_dirs/dsvlm/ablations/{row}{stage}'}
    if not stage:
        expected['model.pretrained_pth'] = load(
            f'dsvlm/ablations/{row}_pretrain').work_dir
    assert differences(cfg, llava) == expected
    assert cfg.model.supervisors == []
    for key in ('model.vision_encoder.train_mode',
                'optim_wrapper.paramwise_cfg.custom_keys.vision_encoder.'
                'lr_mult'):  # the same as DS-VLM's
        assert flatten(cfg.to_dict())[key] == flatten(dsvlm.to_dict())[key]


def test_reference_sizes_of_sd15():
    """Guards the published figures against an independent meta build from
    the architecture written out in this file."""
    with torch.device('meta'):
        assert count(UNet2DConditionModel(**SD15_UNET)) == UNET_PARAMS
        assert count(AutoencoderKL(**SD15_VAE)) == VAE_PARAMS


def test_siglip_vicuna7b_builds_on_meta_with_sd15():
    cfg = load('dsvlm/siglip_vicuna7b')
    model = inspect_model.build_meta_model(cfg)
    sup = model.supervisors[0]
    assert sup.image_layers == dict(low=9, mid=18, high=26)  # SigLIP's levels
    assert {p.device.type for p in model.parameters()} == {'meta'}
    assert (count(sup.unet), count(sup.unet, True)) == (UNET_PARAMS, 0)
    assert (count(sup.vae), count(sup.vae, True)) == (VAE_PARAMS, 0)
    assert (count(sup.recon_loss), count(sup.recon_loss, True)) == (
        VGG16_CONV_PARAMS + LPIPS_HEADS, 0)
    adapters = mlp_adapter(LLM_WIDTH['vicuna7b']) + 3 * mlp_adapter(
        SIGLIP['dim'])
    assert count(sup.adapters) == count(sup.adapters, True) == adapters
    moe_params = moe(image_branches=3)
    assert moe_params == pytest.approx(57.56e6, abs=0.01e6)
    assert count(sup.cross_attention) == count(sup.cross_attention,
                                                True) == moe_params
    # the tool's rows: the supervisor, with its frozen and trainable parts
    rows = inspect_model.count_parameters(model)
    row = rows['supervisors.0 (DiffusionSupervisor)']
    frozen = UNET_PARAMS + VAE_PARAMS + VGG16_CONV_PARAMS + LPIPS_HEADS
    assert row['total'] == frozen + adapters + moe_params
    assert row['trainable'] == adapters + moe_params
    assert row['parts'] == {
        'unet': dict(total=UNET_PARAMS, trainable=0),
        'vae': dict(total=VAE_PARAMS, trainable=0),
        'adapters': dict(total=adapters, trainable=adapters),
        'cross_attention': dict(total=moe_params, trainable=moe_params),
        'recon_loss': dict(total=VGG16_CONV_PARAMS + LPIPS_HEADS,
                           trainable=0)}
    # the encoder trains with the connector and the LLM (stage 2)
    encoder = rows['vision_encoder']
    assert encoder['trainable'] == encoder['total'] > 0.4e9
    assert rows['total']['trainable'] == sum(
        rows[k]['trainable'] for k in ('vision_encoder', 'connector', 'llm')
    ) + adapters + moe_params


def _meta_supervisor(name, encoder=CLIP, llm_width=5120):
    init_default_scope('dsvlm')
    cfg = load(name).model.supervisors[0]
    with torch.device('meta'), architecture_only():
        return SUPERVISORS.build(
            cfg, default_args=dict(encoder_dim=encoder['dim'],
                                   connector_dim=llm_width,
                                   encoder_num_layers=encoder['layers'],
                                   encoder_levels=CLIP_LEVELS))


# Tables 3, 5 and 6 are on Vicuna-13B (connector output 5120 wide)
@pytest.mark.parametrize('name,trainable', [
    ('table3/ts_only', mlp_adapter(5120) + moe(image_branches=0)),
    ('table3/is_high', mlp_adapter(1024) + moe(1, text_branch=False)),
    ('table3/is_high_mid', 2 * mlp_adapter(1024) + moe(2, text_branch=False)),
    ('table3/is_all', 3 * mlp_adapter(1024) + moe(3, text_branch=False)),
    ('table5/sca', mlp_adapter(5120) + 3 * mlp_adapter(1024)),
    ('table6/qformer', qformer_adapter(5120) + 3 * qformer_adapter(1024) +
     moe(3)),
])
def test_ablation_supervisors_build_on_meta(name, trainable):
    sup = _meta_supervisor(f'dsvlm/ablations/{name}')
    assert count(sup, True) == trainable
    assert count(sup.unet, True) == count(sup.vae, True) == 0
    assert count(sup.unet) == UNET_PARAMS
    # levels by name read the paper's CLIP-L layers
    expected = {'ts_only': {}, 'is_high': dict(high=24),
                'is_high_mid': dict(mid=16, high=24)}.get(
                    name.split('/')[1], CLIP_LEVELS)
    assert sup.image_layers == expected


@pytest.mark.parametrize('name', ['table4/mae', 'table4/ssim'])
def test_pixel_losses_have_no_vgg(name):
    sup = _meta_supervisor(f'dsvlm/ablations/{name}', llm_width=4096)
    assert count(sup.recon_loss) == 0
    assert count(sup, True) == mlp_adapter(4096) + 3 * mlp_adapter(
        1024) + moe(3)


def test_stage1_meta_build_trains_encoder_connector_and_supervisor():
    rows = inspect_model.inspect_config(path('dsvlm/clip_vicuna7b_pretrain'))
    assert rows['llm']['trainable'] == 0
    assert rows['vision_encoder']['trainable'] == rows['vision_encoder'][
        'total']
    sup = rows['supervisors.0 (DiffusionSupervisor)']
    assert sup['trainable'] == mlp_adapter(4096) + 3 * mlp_adapter(
        1024) + moe(3)
